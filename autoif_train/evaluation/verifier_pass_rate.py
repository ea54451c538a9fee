"""Held-out verifier pass rate: greedy responses to online-DPO prompt rows, scored by their verifier functions.

The prompt rows are the online-DPO schema (`id`, `prompt` or `messages`, `verifiers` as code or ids into a
`functions.jsonl` bundle), by default the bundled `verifiers/heldout_prompts.jsonl`. Scoring is the one path
(`rewards.VerifierCodeReward`): verifier code runs only in the sandboxed `VerifierPool`, never in this process. A
response's score is its pass rate over its prompt's verifiers (errors and timeouts are left out of the mean, as in
training; all errors -> 0.0 here, and counted in `unscored`); `pass_rate` is the mean over prompts, `all_pass` the
share of prompts whose verifiers all returned True.

`evaluate_verifier_pass_rate(model, tokenizer, prompt_rows, pool)` is the hook the online-DPO trainer calls at the
end of a round with its in-memory policy. Not protected against: under ZeRO-3 the caller must gather the weights
(e.g. inside trl's `unwrap_model_for_generation`) and call it on every rank, since generation is collective.
"""

from __future__ import annotations

from autoif_train.data.rows import PromptRow, load_prompt_rows
from autoif_train.resources import bundled
from autoif_train.rewards import VerifierCodeReward

KEPT_FIELDS = ("instruction_id", "category", "query_id", "query")  # copied into the per-prompt records
DEFAULT_PROMPTS = bundled("verifiers/heldout_prompts.jsonl")


def load_verifier_prompts(
    path: str | None = None, functions: str | None = None, limit: int | None = None
) -> list[PromptRow]:
    """Prompt rows from `path` (default: the bundled held-out prompts), verifier ids resolved, first `limit` rows."""
    if path is None and not DEFAULT_PROMPTS.is_file():
        raise FileNotFoundError(f"bundled held-out prompts not found at {DEFAULT_PROMPTS} (generate them with "
                                "`python -m autoif_train.bundle`) and no prompt file was given")
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
    metrics = {
        "pass_rate": sum(r["pass_rate"] for r in records) / len(records),
        "all_pass": sum(all(x is True for x in r["results"]) for r in records) / len(records),
        "num_prompts": len(records),
        "num_calls": sum(len(r["results"]) for r in records),
        "unscored": sum(scores.unscored),
        "verifier_errors": sum(x is None for r in records for x in r["results"]),
    }
    return metrics, records


def greedy_generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 256, batch_size: int = 8,
                    progress: bool = False) -> list[str]:
    """Greedy completions of chat prompts with an in-memory model, through the one generation layer (the chat
    encoder, every end-of-turn id, `sample_completions`)."""
    from autoif_train.generation.base import GenerationConfig
    from autoif_train.generation.chat import encode_prompt, end_of_turn_ids
    from autoif_train.generation.transformers_backend import sample_completions

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        stops = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=None)
        out = sample_completions(model, tokenizer, [encode_prompt(tokenizer, p) for p in prompts], config, stops,
                                 batch_size, device, progress)
    finally:
        model.train(was_training)
    return [row[0].text for row in out]


def evaluate_verifier_pass_rate(model, tokenizer, prompt_rows: list[PromptRow] | str, pool, *,
                                max_new_tokens: int = 256, batch_size: int = 8, functions: str | None = None,
                                limit: int | None = None) -> float:
    """Mean verifier pass rate of `model`'s greedy responses to `prompt_rows` (rows or a prompt file path)."""
    rows = load_verifier_prompts(prompt_rows, functions, limit) if isinstance(prompt_rows, str) else prompt_rows
    rows = rows[:limit] if limit is not None else rows
    responses = greedy_generate(model, tokenizer, [r.messages for r in rows], max_new_tokens, batch_size)
    metrics, _ = score_verifier_responses(rows, responses, pool)
    return metrics["pass_rate"]
