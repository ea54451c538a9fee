"""Stage 1, instruction augmentation: self-instruct new checkable constraints from the seeds, then dedupe.

Each seed gets `instruction_rewrites` sampled answers (one batched call per chunk), each listing new
constraints; seeds and candidates are deduplicated on normalized text (seeds win). Seeds may carry hand-written
`verifiers` and `cases` (bundle format), which later stages use beside the generated ones.
Not protected against: near-duplicates that differ in wording (only case/punctuation/space are normalized).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

from autoif_train.synth import prompts
from autoif_train.synth.artifacts import SynthError, read_jsonl
from autoif_train.synth.parsing import normalize_text, parse_instruction_list
from autoif_train.synth.stage import StageResult

NAME = "instructions"
UNCHECKABLE = re.compile(r"\b(translat\w*|metaphor\w*|tone|style|humou?r\w*|poetic|emotion\w*)\b", re.IGNORECASE)
EXAMPLES_PER_PROMPT = 4
NEW_PER_ANSWER = 5


def inputs(ctx) -> list[dict]:
    """The seed instructions, validated (file, line and field named on error)."""
    path = ctx.config.seed_instructions
    rows = read_jsonl(path, required=("instruction",))
    seen = set()
    for index, row in enumerate(rows, 1):
        if not isinstance(row["instruction"], str) or not row["instruction"].strip():
            raise row.where.error("instruction", "must be a non-empty string")
        row.setdefault("id", f"seed-{index:04d}")
        if row["id"] in seen:
            raise row.where.error("id", f"duplicate id {row['id']!r}")
        seen.add(row["id"])
        for name in ("verifiers", "cases"):
            if name in row and not isinstance(row[name], list):
                raise row.where.error(name, "must be a list")
    if not rows:
        raise SynthError(f"{path}: no seed instructions")
    return rows


def process(ctx, rows: list[dict], chunk_index: int):
    cfg = ctx.config
    all_seeds = [r["instruction"] for r in inputs(ctx)]
    prompt_list = []
    for row in rows:
        rng = random.Random(f"{cfg.seed}:{row['id']}")
        pool = [s for s in all_seeds if s != row["instruction"]]
        examples = [row["instruction"], *rng.sample(pool, min(EXAMPLES_PER_PROMPT - 1, len(pool)))]
        prompt_list.append(
            prompts.INSTRUCTION_AUGMENT.format(examples="\n".join(f"- {e}" for e in examples), count=NEW_PER_ANSWER)
        )
    answers = ctx.generator.generate(
        prompt_list,
        ctx.gen_config(NAME, chunk_index, n=cfg.instruction_rewrites, temperature=cfg.instruction_temperature,
                       max_new_tokens=cfg.instruction_max_tokens),
    )
    out, drops, details = [], Counter(), Counter()
    for row, samples in zip(rows, answers):
        out.append({**row, "source": "seed", "seed_id": row["id"]})
        for text in samples:
            lines = parse_instruction_list(text)
            if not lines:
                details["empty_answer"] += 1
            for line in lines:
                if len(line) < cfg.instruction_min_chars:
                    drops["too_short"] += 1
                elif len(line) > cfg.instruction_max_chars:
                    drops["too_long"] += 1
                elif UNCHECKABLE.search(line):
                    drops["uncheckable_topic"] += 1
                else:
                    key = hashlib.sha1(normalize_text(line).encode()).hexdigest()[:12]
                    out.append({"id": f"aug-{key}", "instruction": line, "source": "augmented", "seed_id": row["id"]})
    return StageResult(out, drops, details)


def finalize(ctx, rows: list[dict]):
    """Dedupe seeds ∪ augmented on normalized text; seeds come first so they always survive."""
    seen, kept, drops = set(), [], Counter()
    for row in sorted(rows, key=lambda r: r["source"] != "seed"):
        key = normalize_text(row["instruction"])
        if not key or key in seen:
            drops["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return StageResult(kept, drops)
