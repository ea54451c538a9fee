"""Stage 7, query quality verification: an LLM judge scores 0..10 whether a response still answers its query
under the instruction; responses scoring below `quality_threshold` (paper: 8) lose their SFT/chosen role.

Only responses that could be SFT targets or DPO chosen answers are judged (rejected ones need no score). An
unparseable or out-of-range score counts as a fail (`details.score_unparseable`). A row is dropped
(`low_quality`) when no SFT example or DPO pair survives. `quality_filter: false` skips judging (ablation).
"""

from __future__ import annotations

from collections import Counter

from autoif_train.synth import prompts
from autoif_train.synth.parsing import parse_score
from autoif_train.synth.stage import StageResult

NAME = "quality"


def candidate(response: dict, cfg) -> bool:
    return response["pass_rate"] > cfg.min_pass_rate or response["pass_rate"] >= cfg.chosen_threshold


def good(response: dict, cfg) -> bool:
    """A response that may serve as an SFT target / chosen answer after judging."""
    if not candidate(response, cfg):
        return False
    score = response.get("quality")
    return not cfg.quality_filter or (score is not None and score >= cfg.quality_threshold)


def row_survives(row: dict, cfg) -> bool:
    rates_good = [r["pass_rate"] for r in row["responses"] if good(r, cfg)]
    sft = any(p > cfg.min_pass_rate for p in rates_good)
    dpo = bool(rates_good) and any(r["pass_rate"] <= cfg.rejected_threshold and not r.get("unscored")
                                   for r in row["responses"])
    return sft or (dpo and any(p >= cfg.chosen_threshold for p in rates_good))


def process(ctx, rows: list[dict], chunk_index: int):
    cfg = ctx.config
    details = Counter()
    if cfg.quality_filter:
        jobs = [(r, k) for r, row in enumerate(rows) for k, resp in enumerate(row["responses"]) if candidate(resp, cfg)]
        answers = ctx.generator.generate(
            [
                prompts.QUALITY_JUDGE.format(
                    query=rows[r]["query"], instruction=rows[r]["instruction"], response=rows[r]["responses"][k]["text"]
                )
                for r, k in jobs
            ],
            ctx.gen_config(NAME, chunk_index, n=1, temperature=cfg.judge_temperature,
                           max_new_tokens=cfg.judge_max_tokens),
        ) if jobs else []
        rows = [{**row, "responses": [dict(r) for r in row["responses"]]} for row in rows]
        for (r, k), answer in zip(jobs, answers):
            score = parse_score(answer[0])
            rows[r]["responses"][k]["quality"] = score
            details["judged"] += 1
            if score is None:
                details["score_unparseable"] += 1
            elif score < cfg.quality_threshold:
                details["score_below_threshold"] += 1
    out, drops = [], Counter()
    for row in rows:
        if row_survives(row, cfg):
            out.append(row)
        else:
            drops["low_quality"] += 1
    return StageResult(out, drops, details)
