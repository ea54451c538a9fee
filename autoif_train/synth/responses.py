"""Stage 6, response rejection sampling: K responses per (query + instruction) from the supervision model, each
scored by the instruction's verifier functions in the sandboxed `VerifierPool`; pass rate = mean over functions
(errors and timeouts count as fails).

A row is kept when it can feed SFT (some response with pass rate > `min_pass_rate`) or DPO (some response with
pass rate >= `chosen_threshold` and some with pass rate <= `rejected_threshold`); all its responses are kept with
their pass rates. One `generate` call and one `pool.run` call per chunk.
"""

from __future__ import annotations

from collections import Counter

NAME = "responses"


def usable(pass_rates: list[float], cfg) -> bool:
    """True when the pass rates allow an SFT example or a DPO pair."""
    if any(p > cfg.min_pass_rate for p in pass_rates):
        return True
    return any(p >= cfg.chosen_threshold for p in pass_rates) and any(p <= cfg.rejected_threshold for p in pass_rates)


def process(ctx, rows: list[dict], chunk_index: int):
    from autoif_train.sandbox import pass_rate
    from autoif_train.synth.pipeline import StageResult

    cfg = ctx.config
    samples = ctx.generator.generate(
        [row["prompt"] for row in rows],
        ctx.gen_config(NAME, chunk_index, n=cfg.responses_per_query, temperature=cfg.response_temperature,
                       max_new_tokens=cfg.response_max_tokens),
    )
    calls = [(code, text) for row, texts in zip(rows, samples) for text in texts for code in row["functions"]]
    verdicts = ctx.pool.run(calls) if calls else []
    out, drops, details, pos = [], Counter(), Counter(), 0
    for row, texts in zip(rows, samples):
        scored = []
        for text in texts:
            n = len(row["functions"])
            results = verdicts[pos : pos + n]
            pos += n
            scored.append({"text": text, "pass_rate": round(pass_rate(results), 4)})
        details["responses"] += len(scored)
        details["responses_passing"] += sum(s["pass_rate"] > cfg.min_pass_rate for s in scored)
        if usable([s["pass_rate"] for s in scored], cfg):
            out.append({**row, "responses": scored})
        else:
            drops["no_usable_response"] += 1
    return StageResult(out, drops, details)
