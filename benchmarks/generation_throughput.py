"""Online-DPO sampling throughput, vLLM vs transformers, through the path training uses, in one run.

Usage (in the vLLM environment):
    .venv-vllm/bin/python benchmarks/generation_throughput.py [--model smollm2-135m-instruct] [--prompts 16]
        [--samples 4] [--max-new-tokens 64] [--temperature 1.0] [--batch-size 8] [--order hf-first]

Each backend runs in its own fresh interpreter (vLLM keeps per-process state): it builds the real online-DPO
trainer from `recipes/quickstart/online_dpo.yaml` (`use_vllm` false, or true with colocate), then times
`trainer._sample_all` on the first N training prompts, which is what a round calls: equal shares, the policy
sampler (`TransformersPolicy` / `VLLMPolicy`), one record per sample. Tokens are the sampled completion ids
(`num_tokens`), so both runs count the same way; end-of-turn share is printed too. Trainer / engine start-up is
reported separately and not in tokens/s. Prints both rates and the vLLM / transformers ratio of this run.
Not protected against: other load on the machine (the two runs are sequential, not interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "quickstart" / "online_dpo.yaml"


def run_one(backend: str, model: str, prompts: int, samples: int, max_new_tokens: int, temperature: float,
            batch_size: int, out_dir: str) -> dict:
    """In this process: build the trainer for `backend` and time one round's sampling."""
    from transformers import AutoTokenizer

    from autoif_train.configs import parse_recipe
    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.models import resolve_model
    from autoif_train.train import model_init_kwargs
    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    path = resolve_model(model)
    script_args, args, model_args = parse_recipe(str(RECIPE), [
        "--model_name_or_path", path, "--output_dir", out_dir, "--num_samples", str(samples),
        "--max_new_tokens", str(max_new_tokens), "--temperature", str(temperature),
        "--generation_batch_size", str(batch_size), "--use_vllm", str(backend == "vllm").lower(),
        "--vllm_mode", "colocate"])
    rows = load_prompt_rows(str(REPO / script_args.dataset_path), str(REPO / script_args.verifier_bundle))[:prompts]
    tok = AutoTokenizer.from_pretrained(path)
    args.model_init_kwargs = model_init_kwargs(model_args)
    t0 = time.perf_counter()
    trainer = AutoIFOnlineDPOTrainer(model=path, args=args, prompts=rows, processing_class=tok)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    records = trainer._sample_all(rows, samples)
    gen_s = time.perf_counter() - t1
    trainer.close()
    tokens = sum(r["num_tokens"] for r in records)
    return {"backend": backend, "sampler": type(trainer.sampler).__name__, "load_s": load_s, "generate_s": gen_s,
            "tokens": tokens, "completions": len(records), "tokens_per_s": tokens / gen_s,
            "eos_share": sum(r["finish_reason"] == "stop" for r in records) / len(records)}


def main(model: str, prompts: int, samples: int, max_new_tokens: int, temperature: float, batch_size: int,
         order: str) -> dict:
    backends = ["transformers", "vllm"] if order == "hf-first" else ["vllm", "transformers"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in backends:
            out = Path(tmp) / f"{b}.json"
            cmd = [sys.executable, __file__, "--one", b, "--json", str(out), "--model", model, "--prompts",
                   str(prompts), "--samples", str(samples), "--max-new-tokens", str(max_new_tokens),
                   "--temperature", str(temperature), "--batch-size", str(batch_size)]
            env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{b} run failed:\n{proc.stderr[-4000:]}")
            results[b] = json.loads(out.read_text())
    hf, vl = results["transformers"], results["vllm"]
    print(f"\nmodel={model} device=CPU ({platform.processor() or 'x86'}) prompts={prompts} K={samples} "
          f"max_new_tokens={max_new_tokens} temperature={temperature}")
    print(f"{'backend':<13}{'sampler':<19}{'start s':>9}{'sample s':>10}{'tokens':>9}{'tokens/s':>10}{'eos':>7}")
    for r in (hf, vl):
        print(f"{r['backend']:<13}{r['sampler']:<19}{r['load_s']:>9.1f}{r['generate_s']:>10.1f}{r['tokens']:>9d}"
              f"{r['tokens_per_s']:>10.1f}{r['eos_share']:>7.2f}")
    ratio = vl["tokens_per_s"] / hf["tokens_per_s"]
    print(f"vLLM / transformers tokens/s (training sampling path): {ratio:.2f}x")
    return {"ratio": ratio, **results}


def cli(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers prompts per generate call")
    parser.add_argument("--order", choices=["hf-first", "vllm-first"], default="hf-first")
    parser.add_argument("--one", choices=["transformers", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_one(args.one, args.model, args.prompts, args.samples, args.max_new_tokens,
                             args.temperature, args.batch_size, tmp)
        Path(args.json).write_text(json.dumps(result))
        return result
    return main(args.model, args.prompts, args.samples, args.max_new_tokens, args.temperature, args.batch_size,
                args.order)


if __name__ == "__main__":
    cli()
