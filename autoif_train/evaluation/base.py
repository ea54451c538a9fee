"""The benchmark registry of `autoif eval`: a benchmark is one module here and one line in `REGISTRY`.

A benchmark module defines `load(args) -> Benchmark` (read and validate every row; `args` is the command's
`EvalArgs`, so it reads `args.limit` and its own data flag), and the object it returns has `name`,
`uses_sandbox` (True when scoring runs verifier code, in the pool the command passes), `prompts()` (strings or chat
message lists, in order) and `score(responses, pool) -> (metrics, per-prompt records)`. Data is loaded before any
model; generation and reports are the command's job.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from autoif_train.core.errors import RecipeError

# name -> module defining `load(args)`
REGISTRY: dict[str, str] = {
    "ifeval": "autoif_train.evaluation.ifeval",
    "ifbench": "autoif_train.evaluation.ifbench",
    "verifiers": "autoif_train.evaluation.heldout_verifiers",
}


class Benchmark(Protocol):
    name: str
    uses_sandbox: bool

    def prompts(self) -> list[Any]: ...

    def score(self, responses: list[str], pool=None) -> tuple[dict, list[dict]]: ...


def check_names(names: list[str]) -> list[str]:
    """`names` if each is registered; else `RecipeError` naming the unknown ones and the choices."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise RecipeError(None, None, "benchmarks", f"unknown benchmark(s) {unknown}; choose from "
                                                    f"{', '.join(REGISTRY)}")
    return names


def load_benchmark(name: str, args) -> Benchmark:
    """The registered benchmark `name`, its rows read and validated (a bad row raises here)."""
    return importlib.import_module(REGISTRY[check_names([name])[0]]).load(args)
