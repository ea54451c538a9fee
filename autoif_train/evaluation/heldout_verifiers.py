"""The `verifiers` benchmark of `autoif eval`: held-out online-DPO prompt rows scored by their verifier functions in
the sandbox (`verifier_pass_rate.py` holds the scoring). Data: `--verifier_prompts` (default: the bundled
`verifiers/heldout_prompts.jsonl`) with ids resolved through `--functions` (default: beside the prompts)."""

from __future__ import annotations

from dataclasses import dataclass

from autoif_train.data.rows import PromptRow


@dataclass
class HeldoutVerifiers:
    rows: list[PromptRow]
    name: str = "verifiers"
    uses_sandbox: bool = True

    def prompts(self) -> list[list[dict]]:
        return [r.messages for r in self.rows]

    def score(self, responses: list[str], pool=None) -> tuple[dict, list[dict]]:
        from autoif_train.evaluation.verifier_pass_rate import score_verifier_responses

        return score_verifier_responses(self.rows, responses, pool, progress=True)


def load(args) -> HeldoutVerifiers:
    from autoif_train.evaluation.verifier_pass_rate import load_verifier_prompts

    return HeldoutVerifiers(load_verifier_prompts(args.verifier_prompts, args.functions, args.limit))
