"""Stage 6, response rejection sampling: K responses per (query + instruction) from the supervision model, each
scored by the instruction's verifier functions through the one scoring path (`rewards.VerifierCodeReward`, in the
sandboxed `VerifierPool`); pass rate = mean over the functions that returned a bool. A response where none did is
stored with pass rate 0.0 (AutoIF's code) and `"unscored": true`, so the pair rule leaves it out of pairs.

A row is kept when it can feed SFT (some response with pass rate > `min_pass_rate`) or DPO (some response with
pass rate >= `chosen_threshold` and some with pass rate <= `rejected_threshold`); all its responses are kept with
their pass rates. One `generate` call and one `pool.run` call per chunk.
"""

from __future__ import annotations

from collections import Counter

NAME = "responses"


def usable(pass_rates: list[float], cfg) -> bool:
    """True when the pass rates (None = unscored) allow an SFT example or a DPO pair."""
    rates = [p for p in pass_rates if p is not None]
    if any(p > cfg.min_pass_rate for p in rates):
        return True
    return any(p >= cfg.chosen_threshold for p in rates) and any(p <= cfg.rejected_threshold for p in rates)


def process(ctx, rows: list[dict], chunk_index: int):
    from autoif_train.rewards import VerifierCodeReward
    from autoif_train.synth.pipeline import StageResult

    cfg = ctx.config
    samples = ctx.generator.generate(
        [row["prompt"] for row in rows],
        ctx.gen_config(NAME, chunk_index, n=cfg.responses_per_query, temperature=cfg.response_temperature,
                       max_new_tokens=cfg.response_max_tokens),
    )
    flat_rows = [row["functions"] for row, texts in zip(rows, samples) for _ in texts]
    scores = VerifierCodeReward(ctx.pool).score(flat_rows, [text for texts in samples for text in texts])
    out, drops, details, pos = [], Counter(), Counter(), 0
    for row, texts in zip(rows, samples):
        scored = []
        for text in texts:
            rate = scores.pass_rates[pos]
            pos += 1
            scored.append({"text": text, "pass_rate": round(rate or 0.0, 4), **({"unscored": True} if rate is None
                                                                                 else {})})
        details["responses"] += len(scored)
        details["responses_unscored"] += sum("unscored" in s for s in scored)
        details["responses_passing"] += sum(s["pass_rate"] > cfg.min_pass_rate for s in scored)
        if usable([None if s.get("unscored") else s["pass_rate"] for s in scored], cfg):
            out.append({**row, "responses": scored})
        else:
            drops["no_usable_response"] += 1
    return StageResult(out, drops, details)
