"""Stage 5, query augmentation: pair each instruction with K real user queries from a query source.

The source is a local JSONL/JSON file (rows with a `query`/`prompt`/`instruction`/`question`/`text` field, or
ShareGPT rows whose first human turn is used) or a `datasets` id. Queries outside [query_min_chars,
query_max_chars], exact duplicates and queries listed in `exclude_queries` (held-out evaluation rows, by
`query_id`) are dropped (counted in details as `source:*`). Each instruction gets K
queries sampled with a seed derived from (run seed, instruction id), so pairing does not depend on chunking.
An empty source is a clear error raised before any row of this stage is written; earlier stages stay finished.
"""

from __future__ import annotations

import random
from collections import Counter

from autoif_train.core.io import read_rows
from autoif_train.synth import prompts
from autoif_train.synth.artifacts import SynthError, read_jsonl
from autoif_train.synth.stage import StageResult

NAME = "queries"
QUERY_FIELDS = ("query", "prompt", "instruction", "question", "text")


def _query_of(row: dict, field: str | None) -> str | None:
    if field:
        value = row.get(field)
        return value if isinstance(value, str) else None
    for name in ("conversations", "messages"):
        turns = row.get(name)
        if isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict) and (turn.get("from") or turn.get("role")) in ("human", "user"):
                    value = turn.get("value", turn.get("content"))
                    return value if isinstance(value, str) else None
            return None
    return next((row[k] for k in QUERY_FIELDS if isinstance(row.get(k), str)), None)


def _read_source(cfg) -> list[dict]:
    source = cfg.query_source
    if not source:
        raise SynthError("query_source is not set: give a local JSONL/JSON file or a datasets id")
    return read_rows(source, split=cfg.query_split, error=SynthError)


def load_queries(cfg) -> tuple[list[dict], Counter]:
    """Usable queries `{query_id, query}` and the source's drop counts; raises `SynthError` when none is usable."""
    rows = _read_source(cfg)
    if cfg.max_query_rows:
        rows = rows[: cfg.max_query_rows]
    excluded = set()
    for path in cfg.exclude_queries:
        excluded.update(str(r["query_id"]) for r in read_jsonl(path, required=("query_id",)))
    kept, seen, stats = [], set(), Counter()
    for index, row in enumerate(rows):
        text = _query_of(row, cfg.query_field)
        text = text.strip() if text else text
        if str(row.get("id", index)) in excluded:
            stats["source:excluded"] += 1
        elif not text:
            stats["source:no_query"] += 1
        elif len(text) < cfg.query_min_chars:
            stats["source:too_short"] += 1
        elif len(text) > cfg.query_max_chars:
            stats["source:too_long"] += 1
        elif text in seen:
            stats["source:duplicate"] += 1
        else:
            seen.add(text)
            kept.append({"query_id": str(row.get("id", index)), "query": text})
    if not kept:
        field = cfg.query_field or "/".join(QUERY_FIELDS) + " or ShareGPT conversations"
        raise SynthError(
            f"query_source {cfg.query_source!r}: no usable queries among {len(rows)} rows (field {field}, "
            f"length {cfg.query_min_chars}..{cfg.query_max_chars} chars; {dict(stats)})"
        )
    return kept, stats


def _pool(ctx):
    if getattr(ctx, "_queries", None) is None:
        ctx._queries = load_queries(ctx.config)
    return ctx._queries


def process(ctx, rows: list[dict], chunk_index: int):
    cfg = ctx.config
    pool, _ = _pool(ctx)
    out = []
    for row in rows:
        rng = random.Random(f"{cfg.seed}:{row['id']}")
        for q in (pool[i] for i in rng.sample(range(len(pool)), min(cfg.queries_per_instruction, len(pool)))):
            out.append({
                "id": f"{row['id']}::{q['query_id']}", "instruction_id": row["id"], "instruction": row["instruction"],
                "query_id": q["query_id"], "query": q["query"], "functions": row["functions"],
                "prompt": prompts.QUERY_WITH_INSTRUCTION.format(query=q["query"], instruction=row["instruction"]),
            })
    return StageResult(out)


def finalize(ctx, rows: list[dict]):
    return StageResult(rows, details=Counter(_pool(ctx)[1]))
