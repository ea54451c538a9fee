"""IFEval (Zhou et al., 2023): 541 prompts with 25 verifiable instruction types, scored with Google's checkers.

Data: the hub dataset `google/IFEval` by default, or a local JSONL in the same schema (`key`, `prompt`,
`instruction_id_list`, `kwargs`), e.g. the official `input_data.jsonl`. Checkers: `if_verifiable.ifeval`.
"""

from __future__ import annotations

from autoif_train.evaluation.instruction_following import InstructionBenchmark, build_benchmark, read_benchmark_rows

HUB_DATASET = "google/IFEval"
REGISTRY = "if_verifiable.ifeval.instructions_registry"


def load_ifeval(data: str | None = None, limit: int | None = None, skip_unavailable: bool = False
                ) -> InstructionBenchmark:
    """IFEval rows from `data` (a local JSONL) or the hub, validated against the checkers; first `limit` rows."""
    source = data or HUB_DATASET
    return build_benchmark("ifeval", read_benchmark_rows(source), str(source), REGISTRY, limit, skip_unavailable)


def load(args) -> InstructionBenchmark:
    """The `ifeval` entry of `evaluation/base.py`: `--data` (default: the hub dataset), first `--limit` rows."""
    return load_ifeval(args.data, args.limit, args.skip_unavailable_checkers)
