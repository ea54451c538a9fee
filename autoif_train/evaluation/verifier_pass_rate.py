"""Held-out verifier pass rate: greedy responses to online-DPO prompt rows, scored by their verifier functions.

The prompt rows are the online-DPO schema (`id`, `prompt` or `messages`, `verifiers` as code or ids into a
`functions.jsonl` bundle), by default the bundled `verifiers/heldout_prompts.jsonl`. Scoring is the one path
(`rewards.VerifierCodeReward`): verifier code runs only in the sandboxed `VerifierPool`, never in this process. A
response's score is its pass rate over its prompt's verifiers (errors and timeouts are left out of the mean, as in
training; all errors -> 0.0 here, and counted in `unscored`); `pass_rate` is the mean over prompts, `all_pass` the
share of prompts whose verifiers all returned True.

Used by `autoif eval` (the `verifiers` benchmark) and `autoif quickstart` (before and after training); the
online-DPO trainer's per-round held-out rate samples with its own policy sampler (`training.rollouts`).
"""

from __future__ import annotations

from autoif_train.data.rows import DataError, PromptRow, load_prompt_rows
from autoif_train.resources import bundled
from autoif_train.rewards import VerifierCodeReward

KEPT_FIELDS = ("instruction_id", "category", "query_id", "query")  # copied into the per-prompt records
DEFAULT_PROMPTS = bundled("verifiers/heldout_prompts.jsonl")


def load_verifier_prompts(
    path: str | None = None, functions: str | None = None, limit: int | None = None
) -> list[PromptRow]:
    """Prompt rows from `path` (default: the bundled held-out prompts), verifier ids resolved, first `limit` rows."""
    if path is None and not DEFAULT_PROMPTS.is_file():
        raise DataError(DEFAULT_PROMPTS, None, None, "bundled held-out prompts not found (generate them with "
                                                     "`autoif bundle`) and no prompt file was given")
    rows = load_prompt_rows(str(path or DEFAULT_PROMPTS), bundle_path=functions)
    return rows[:limit] if limit is not None else rows


def score_verifier_responses(
    rows: list[PromptRow], responses: list[str], pool, progress: bool = False
) -> tuple[dict, list[dict]]:
    """Run every (verifier, response) pair in `pool` in one batch; return metrics and per-prompt records."""
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses for {len(rows)} verifier prompts")
    if not rows:
        raise ValueError("no verifier prompts to score")
    scores = VerifierCodeReward(pool, progress=progress).score(rows, responses)
    records = []
    for row, response, own, rate in zip(rows, responses, scores.results, scores.rates(0.0)):
        records.append({
            "id": row.id, "messages": row.messages, "response": response, "results": own,
            "pass_rate": rate, **{k: v for k, v in row.extra.items() if k in KEPT_FIELDS},
        })
    return verifier_metrics(records), records


def verifier_metrics(records: list[dict]) -> dict:
    """Pass rate (mean per prompt), all-pass share, counts and errors of scored records (any subset of them)."""
    return {
        "pass_rate": sum(r["pass_rate"] for r in records) / len(records),
        "all_pass": sum(all(x is True for x in r["results"]) for r in records) / len(records),
        "num_prompts": len(records),
        "num_calls": sum(len(r["results"]) for r in records),
        "unscored": sum(all(x is None for x in r["results"]) for r in records),
        "verifier_errors": sum(x is None for r in records for x in r["results"]),
    }
