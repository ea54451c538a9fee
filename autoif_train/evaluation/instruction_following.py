"""Official IFEval-style scoring (strict and loose, prompt- and instruction-level) over a checker registry.

The checkers themselves come from the maintained package `if-verifiable` (Google's IFEval checkers and AllenAI's
IFBench checkers); this module only runs them the way the reference `evaluation_lib.py` of IFEval / IFBench does:
kwargs with value None are dropped, checkers that take the prompt get it, an empty response follows nothing, every
instruction counts (none is skipped), and "loose" accepts a response if any of the eight official variants (first
and/or last line removed, `*` removed) passes. If-verifiable's own `evaluate_instructions` is not used because it
skips unknown instructions, drops empty responses from the instruction count and strips `<think>` blocks.

A checker that raises on a response counts as not followed and is reported in `checker_errors` (the reference code
would crash the run); missing NLTK data is re-raised as `MissingCheckerData`, never scored. Generated text is only
read by the checkers, never executed.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoif_train.core.errors import InputError
from autoif_train.core.io import Row, is_local, read_rows
from autoif_train.evaluation.nltk_resources import MissingCheckerData, check_resources, ensure_punkt, unavailable

logger = logging.getLogger(__name__)

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


class BenchmarkDataError(InputError):
    """A benchmark row is malformed; the message names the file, line and field."""


def import_registry(module: str) -> dict[str, type]:
    """`INSTRUCTION_DICT` of an if-verifiable registry module, with Punkt provided first.

    if-verifiable calls `nltk.download` at import for NLTK data it does not find (where the NLTK data host is
    unreachable this prints "Error loading ..." lines and changes nothing; `check_resources` decides what is needed).
    """
    import importlib

    ensure_punkt()
    registry = importlib.import_module(module).INSTRUCTION_DICT
    try:
        from langdetect import DetectorFactory

        DetectorFactory.seed = 0  # language checks are otherwise random between runs
    except ImportError:
        pass
    return dict(registry)


def validate_rows(rows: list[Row], registry: dict[str, type], name: str) -> list[dict]:
    """Check the IFEval row schema (`key`, `prompt`, `instruction_id_list`, `kwargs`); return normalized rows."""
    out = []
    for row in rows:
        error = row.where.error
        for field_name in ("key", "prompt", "instruction_id_list", "kwargs"):
            if field_name not in row:
                raise error(field_name, f"missing ({name} rows need key, prompt, instruction_id_list, kwargs)")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise error("prompt", "must be a non-empty string")
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise error("instruction_id_list", "must be a non-empty list of strings")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            raise error("kwargs", f"must be a list of {len(ids)} objects, one per instruction")
        unknown = [i for i in ids if i not in registry]
        if unknown:
            raise error("instruction_id_list", f"has instruction(s) {unknown} that the {name} checkers do not know")
        out.append({"key": row["key"], "prompt": row["prompt"], "instruction_id_list": ids, "kwargs": kwargs})
    return out


def read_benchmark_rows(source: str | Path) -> list[Row]:
    """Rows of a local JSONL file (a `Path` or a path string) or of a hub dataset id's `train` split; a bad line
    or an unreachable hub raises `BenchmarkDataError` naming the file and line."""
    if isinstance(source, str) and is_local(source):
        source = Path(source)
    return read_rows(source, nonempty=True, error=BenchmarkDataError)


def loose_variants(response: str) -> list[str]:
    """The eight responses the official loose metric tries (from if-verifiable, same as the reference)."""
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(response)


def _checker(registry: dict[str, type], instruction_id: str, kwargs: dict, prompt: str):
    checker = registry[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def _follows(checker, text: str) -> bool:
    try:
        return bool(text.strip() and checker.check_following(text))
    except LookupError as err:  # NLTK data missing: never score it as a failure
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip().strip("*"))
        raise MissingCheckerData(f"checker {checker.id!r} needs NLTK data that is not installed: {detail[:300]}") from err


def score_row(row: dict, response: str, registry: dict[str, type]) -> dict[str, Any]:
    """Per-instruction strict and loose results for one response, plus any checker errors.

    The reference checkers draw a random value for a kwarg they reject (IFEval rows 1122 and 1129 ask for the
    "letter" '#' / '!', so a random letter is counted): `random` is seeded from the row key so every model is scored
    against the same draw, and one checker serves both strict and loose (lm-eval builds two, so its loose result
    can fall below its strict one on those rows). The global `random` state is restored afterwards.
    """
    variants = loose_variants(response)
    state = random.getstate()
    random.seed(f"autoif-eval:{row['key']}")
    try:
        return _score_instructions(row, response, variants, registry)
    finally:
        random.setstate(state)


def _score_instructions(row: dict, response: str, variants: list[str], registry: dict[str, type]) -> dict[str, Any]:
    strict, loose, errors = [], [], []
    for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
        try:
            checker = _checker(registry, instruction_id, kwargs, row["prompt"])
            is_strict = _follows(checker, response)
            is_loose = is_strict or any(_follows(checker, v) for v in variants)
        except MissingCheckerData:
            raise
        except Exception as err:  # a checker bug must not lose the run; it is counted and shown
            errors.append(f"{instruction_id}: {type(err).__name__}: {err}")
            is_strict = is_loose = False
        strict.append(is_strict)
        loose.append(is_loose)
    return {"strict": strict, "loose": loose, "errors": errors}


def aggregate(scored: list[dict]) -> dict[str, float | int]:
    """Prompt-level (all instructions followed) and instruction-level (flattened) strict / loose accuracy."""
    if not scored:
        raise ValueError("no scored rows to aggregate")
    flat_strict = [x for s in scored for x in s["strict"]]
    flat_loose = [x for s in scored for x in s["loose"]]
    return {
        "prompt_strict": sum(all(s["strict"]) for s in scored) / len(scored),
        "prompt_loose": sum(all(s["loose"]) for s in scored) / len(scored),
        "instruction_strict": sum(flat_strict) / len(flat_strict),
        "instruction_loose": sum(flat_loose) / len(flat_loose),
        "num_prompts": len(scored),
        "num_instructions": len(flat_strict),
        "checker_errors": sum(len(s["errors"]) for s in scored),
    }


@dataclass
class InstructionBenchmark:
    """An IFEval-format benchmark: rows plus the checker registry that scores them."""

    name: str
    rows: list[dict]
    registry: dict[str, type]
    source: str
    uses_sandbox: bool = False  # checkers are library code run on the text, never generated code
    left_out: dict = field(default_factory=dict)  # prompts left out because their checkers lack NLTK data

    def prompts(self) -> list[str]:
        return [row["prompt"] for row in self.rows]

    def score(self, responses: list[str], pool=None) -> tuple[dict, list[dict]]:
        """Metrics and per-prompt records (prompt, response, per-instruction results) for `responses`."""
        if len(responses) != len(self.rows):
            raise ValueError(f"{self.name}: {len(responses)} responses for {len(self.rows)} prompts")
        records = []
        for row, response in zip(self.rows, responses):
            result = score_row(row, response, self.registry)
            records.append({
                "key": row["key"], "prompt": row["prompt"], "response": response,
                "instruction_id_list": row["instruction_id_list"], **result,
            })
        metrics = aggregate(records)
        # online DPO can shorten answers, which costs IFEval's "at least N" checks: the length is shown beside them
        metrics["mean_response_words"] = sum(len(r.split()) for r in responses) / len(responses)
        if self.left_out:
            metrics["left_out_prompts"] = self.left_out["prompts"]
            metrics["left_out_checkers"] = self.left_out["checkers"]
        return metrics, records


def build_benchmark(
    name: str, rows: list[Row], where: str, registry_module: str, limit: int | None,
    skip_unavailable: bool = False,
) -> InstructionBenchmark:
    """Validate rows against the registry (all rows, so a bad row fails before any generation) and apply `limit`.

    A row whose checkers lack their NLTK data stops the run (`MissingCheckerData`), or with `skip_unavailable` is
    left out before `limit` applies; the count and the checkers are reported in the metrics (`left_out_*`)."""
    registry = import_registry(registry_module)
    rows = validate_rows(rows, registry, name)
    left_out = {}
    if skip_unavailable:
        missing = {i for ids in unavailable({i for row in rows for i in row["instruction_id_list"]}).values()
                   for i in ids}
        if missing:
            kept = [row for row in rows if not missing & set(row["instruction_id_list"])]
            left_out = {"prompts": len(rows) - len(kept), "checkers": sorted(missing)}
            logger.warning("%s: left out %d prompts whose checkers %s lack NLTK data", name, left_out["prompts"],
                           ", ".join(sorted(missing)))
            rows = kept
    if limit is not None:
        rows = rows[:limit]
    check_resources({i for row in rows for i in row["instruction_id_list"]}, name)
    return InstructionBenchmark(name=name, rows=rows, registry=registry, source=where, left_out=left_out)
