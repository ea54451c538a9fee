"""Stage 9, export: SFT data, offline DPO pairs and the online-DPO prompt set, written into the run folder.

- `sft.jsonl`: TRL conversational rows `{"messages": [user, assistant], ...}` (best `sft_responses_per_query`
  responses with pass rate > `min_pass_rate` that passed the quality judge); `sft_alpaca.json`: the same as
  LLaMA-Factory alpaca records `{"instruction", "input", "output"}`.
- `dpo.jsonl`: TRL conversational preference rows `{"prompt": [user], "chosen": [assistant], "rejected":
  [assistant]}` by the one pair rule (`data.pairs.prompt_pairs`, the rule online rounds use, seeded by `seed` and
  the row id): query level (a chosen answer must also pass the quality judge; unscored responses join no pair)
  plus instruction level (cross-validation cases passing all kept functions, pass rate 1, vs. failing all, pass
  rate 0, with the instruction as the prompt; checked for n-gram overlap as well).
- `online_dpo_prompts.jsonl`: `{"id", "prompt": [user], "verifiers": [code...], "instruction_id", "query"}` for
  every decontaminated row, the format the online-DPO trainer reads.
The stage's own artifact is the online-DPO prompt set.
"""

from __future__ import annotations

import json
from collections import Counter

from autoif_train.core.io import write_jsonl, write_text
from autoif_train.data.pairs import prompt_pairs
from autoif_train.synth.quality import good

NAME = "export"
FILES = ("sft.jsonl", "sft_alpaca.json", "dpo.jsonl", "online_dpo_prompts.jsonl")


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def sft_rows(rows: list[dict], cfg) -> list[dict]:
    out = []
    for row in rows:
        best = sorted(
            (r for r in row["responses"] if r["pass_rate"] > cfg.min_pass_rate and good(r, cfg)),
            key=lambda r: (-r["pass_rate"], -(r.get("quality") or 0)),
        )
        for r in best[: cfg.sft_responses_per_query]:
            out.append({
                "id": row["id"], "instruction_id": row["instruction_id"], "pass_rate": r["pass_rate"],
                "messages": _user(row["prompt"]) + _assistant(r["text"]),
            })
    return out


def pair_rate(response: dict, cfg) -> float | None:
    """The pass rate the pair rule sees: None when unscored, or when a would-be chosen answer failed the judge."""
    if response.get("unscored"):
        return None
    rate = response["pass_rate"]
    return None if rate >= cfg.chosen_threshold and not good(response, cfg) else rate


def query_pairs(rows: list[dict], cfg) -> list[dict]:
    rule, out = cfg.pair_rule(), []
    for row in rows:
        responses = row["responses"]
        rates = [pair_rate(r, cfg) for r in responses]
        quality = [r.get("quality") for r in responses]
        for c, j in prompt_pairs(row["id"], [r["text"] for r in responses], rates, rule, cfg.seed, quality=quality):
            out.append({
                "id": row["id"], "level": "query", "prompt": _user(row["prompt"]),
                "chosen": _assistant(responses[c]["text"]), "rejected": _assistant(responses[j]["text"]),
                "chosen_pass_rate": responses[c]["pass_rate"], "rejected_pass_rate": responses[j]["pass_rate"],
            })
    return out


def instruction_pairs(instruction_rows: list[dict], cfg, deco) -> tuple[list[dict], Counter]:
    rule, out, drops = cfg.pair_rule(), [], Counter()
    for row in instruction_rows:
        texts = row.get("chosen_cases", []) + row.get("rejected_cases", [])
        rates = [1.0] * len(row.get("chosen_cases", [])) + [0.0] * len(row.get("rejected_cases", []))
        pairs = prompt_pairs(f"instruction:{row['id']}", texts, rates, rule, cfg.seed)
        if not pairs:
            continue
        if deco.hit(row["instruction"], *{texts[i] for pair in pairs for i in pair}):
            drops["instruction_pair_ngram_overlap"] += 1
            continue
        for c, j in pairs:
            out.append({
                "id": row["id"], "level": "instruction", "prompt": _user(row["instruction"]),
                "chosen": _assistant(texts[c]), "rejected": _assistant(texts[j]),
            })
    return out, drops


def process(ctx, rows: list[dict], chunk_index: int):
    from autoif_train.synth.pipeline import StageResult

    return StageResult(rows)


def finalize(ctx, rows: list[dict]):
    from autoif_train.synth.decontamination import get_decontaminator
    from autoif_train.synth.pipeline import StageResult

    cfg, run = ctx.config, ctx.run
    sft = sft_rows(rows, cfg)
    inst_pairs, details = instruction_pairs(run.read_stage("back_translation"), cfg, get_decontaminator(ctx))
    dpo = query_pairs(rows, cfg) + inst_pairs
    online = [
        {"id": row["id"], "prompt": _user(row["prompt"]), "verifiers": row["functions"],
         "instruction_id": row["instruction_id"], "query": row["query"]}
        for row in rows
    ]
    write_jsonl(run.root / "sft.jsonl", sft)
    alpaca = [{"instruction": r["messages"][0]["content"], "input": "", "output": r["messages"][1]["content"]}
              for r in sft]
    write_text(run.root / "sft_alpaca.json", json.dumps(alpaca, indent=1, ensure_ascii=False) + "\n")
    write_jsonl(run.root / "dpo.jsonl", dpo)
    write_jsonl(run.root / "online_dpo_prompts.jsonl", online)
    ctx.export_outputs = {
        "sft": len(sft), "dpo_query_level": len(dpo) - len(inst_pairs), "dpo_instruction_level": len(inst_pairs),
        "online_dpo_prompts": len(online),
    }
    details.update({f"written:{k}": v for k, v in ctx.export_outputs.items()})
    return StageResult(online, details=details)
