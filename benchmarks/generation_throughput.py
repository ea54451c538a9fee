"""Generation throughput of vLLM vs transformers `generate` on the same prompts and sampling settings, in one run.

Usage (in the vLLM environment):
    .venv-vllm/bin/python benchmarks/generation_throughput.py [--model smollm2-135m-instruct] [--prompts 16]
        [--samples 8] [--max-new-tokens 128] [--temperature 0.8] [--batch-size 16] [--order hf-first]

Both runs go through the project's generation backends (`build_generator("transformers" | "vllm")`): the same
online-DPO training prompts (`verifiers/train_prompts.jsonl`, first N), K samples each, the same temperature /
top_p / token budget. Useful tokens are counted by re-tokenising every completion with the model's tokenizer (the
same count for both runs). Model loading / engine start-up is reported separately and not in tokens/s. Prints
both rates and the vLLM / transformers ratio measured in this run. On CPU the engine uses fp32 and eager mode.
Not protected against: other load on the machine during the run (the two runs are sequential, not interleaved).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(x) for x in (REPO / "verifiers" / "train_prompts.jsonl").read_text().splitlines() if x.strip()]
    if len(rows) < n:
        raise SystemExit(f"verifiers/train_prompts.jsonl has {len(rows)} prompts, fewer than --prompts {n}")
    return [r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
            for r in rows[:n]]


def run_backend(backend: str, model: str, prompts, config, batch_size: int) -> dict:
    from transformers import AutoTokenizer

    from autoif_train.generation import build_generator

    kwargs = {"batch_size": batch_size} if backend == "transformers" else {"max_model_len": 2048}
    t0 = time.perf_counter()
    gen = build_generator(backend, model=model, progress=False, **kwargs)
    load_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        outs = gen.generate(prompts, config)
        gen_s = time.perf_counter() - t1
    finally:
        gen.close()
        del gen
        gc.collect()
    from autoif_train.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    tokens = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for o in outs for c in o)
    completions = sum(len(o) for o in outs)
    return {"backend": backend, "load_s": load_s, "generate_s": gen_s, "tokens": tokens, "completions": completions,
            "tokens_per_s": tokens / gen_s}


def main(model: str, prompts: int, samples: int, max_new_tokens: int, temperature: float, top_p: float,
         batch_size: int, order: str) -> dict:
    import torch

    from autoif_train.generation import GenerationConfig

    data = load_prompts(prompts)
    config = GenerationConfig(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=0)
    backends = ["transformers", "vllm"] if order == "hf-first" else ["vllm", "transformers"]
    results = {b: run_backend(b, model, data, config, batch_size) for b in backends}
    hf, vl = results["transformers"], results["vllm"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86'})"
    print(f"\nmodel={model} device={device} prompts={prompts} K={samples} max_new_tokens={max_new_tokens} "
          f"temperature={temperature} top_p={top_p}")
    print(f"{'backend':<13}{'load s':>9}{'generate s':>12}{'tokens':>9}{'tokens/s':>10}")
    for r in (hf, vl):
        print(f"{r['backend']:<13}{r['load_s']:>9.1f}{r['generate_s']:>12.1f}{r['tokens']:>9d}{r['tokens_per_s']:>10.1f}")
    ratio = vl["tokens_per_s"] / hf["tokens_per_s"]
    print(f"vLLM / transformers tokens/s: {ratio:.2f}x")
    return {"ratio": ratio, **results}


def cli(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers prompts per generate call")
    parser.add_argument("--order", choices=["hf-first", "vllm-first"], default="hf-first")
    args = parser.parse_args(argv)
    return main(args.model, args.prompts, args.samples, args.max_new_tokens, args.temperature, args.top_p,
                args.batch_size, args.order)


if __name__ == "__main__":
    cli()
