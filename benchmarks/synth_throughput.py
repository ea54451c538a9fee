"""Throughput of one synthesis stage on the same inputs: batched (one call per chunk) vs one request at a time.

Usage:
    python benchmarks/synth_throughput.py [--model smollm2-135m-instruct] [--stage responses] [--rows 8]
        [--samples 4] [--max-new-tokens 32] [--batch-size 16]

Both runs use the transformers backend, the same model, prompts, K and token budget; the sequential run sends
each row as its own `generate` call with batch size 1 (what the original AutoIF scripts do). Prints seconds,
completions/s and the batched/sequential speed ratio measured in this one run. Timing includes sandbox scoring
for the responses stage (the same calls in both runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUERIES = [
    "How do I bake a simple loaf of bread at home?", "What are three tips for staying focused while studying?",
    "Explain why the sky looks blue during the day.", "Suggest a name for a small coffee shop by the beach.",
    "Describe the water cycle for a ten year old.", "What should I pack for a weekend hiking trip?",
    "Give me a short plan for learning to play guitar.", "Why do cats purr, and what does it mean?",
]


def make_rows(stage: str, n: int) -> list[dict]:
    seeds = [json.loads(x) for x in (REPO / "recipes/synth/seed_instructions.jsonl").read_text().splitlines()]
    rows = []
    for i in range(n):
        seed = seeds[i % len(seeds)]
        query = QUERIES[i % len(QUERIES)]
        if stage == "responses":
            rows.append({"id": f"r{i}", "prompt": f"{query}\n{seed['instruction']}",
                         "functions": [v["code"] for v in seed["verifiers"]]})
        else:
            rows.append({"id": f"r{i}", "instruction": seed["instruction"]})
    return rows


def timed(ctx, module, batches: list[list[dict]]) -> tuple[float, int]:
    start = time.perf_counter()
    produced = 0
    for index, batch in enumerate(batches):
        result = module.process(ctx, batch, index)
        produced += result.candidates
    return time.perf_counter() - start, produced


def main(model: str, stage: str, rows: int, samples: int, max_new_tokens: int, batch_size: int) -> float:
    from autoif_train.generation import build_generator
    from autoif_train.synth import responses, verifier_generation
    from autoif_train.synth.artifacts import RunFolder
    from autoif_train.synth.config import SynthConfig
    from autoif_train.synth.pipeline import SynthContext

    module = {"responses": responses, "verifier_generation": verifier_generation}[stage]
    data = make_rows(stage, rows)
    cfg = SynthConfig(responses_per_query=samples, verifier_samples=samples, response_max_tokens=max_new_tokens,
                      verifier_max_tokens=max_new_tokens, response_temperature=0.8)
    completions = rows * samples
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, size, batches in (("batched", batch_size, [data]), ("sequential", 1, [[r] for r in data])):
            gen = build_generator("transformers", model, batch_size=size, progress=False)
            ctx = SynthContext(cfg, RunFolder(Path(tmp) / mode), generator=gen)
            timed(ctx, module, [data[:1]])  # warm-up: sandbox start, first forward
            seconds, _ = timed(ctx, module, batches)
            ctx.close()
            gen.close()
            results[mode] = seconds
            print(f"{mode:<11} {seconds:8.2f} s  {completions / seconds:7.2f} completions/s  "
                  f"({len(batches)} generate call(s), batch size {size})")
    ratio = results["sequential"] / results["batched"]
    print(f"stage={stage} model={model} rows={rows} K={samples} max_new_tokens={max_new_tokens}: "
          f"batched is {ratio:.2f}x the throughput of one-at-a-time")
    return ratio


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Path, hub id or embedded model name.")
    parser.add_argument("--stage", default="responses", choices=["responses", "verifier_generation"])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="K completions per row.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    main(args.model, args.stage, args.rows, args.samples, args.max_new_tokens, args.batch_size)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    cli()
