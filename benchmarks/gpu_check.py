"""GPU check: one online-DPO round of a random ~0.5B Llama under bf16 DeepSpeed ZeRO-3 on one GPU, measured against
`autoif plan`'s prediction. No downloads: the model is built from a config, the tokenizer ships in tests/data.

Usage (on a GPU machine, from the repository root; ~5 min on one H100/H200):
    python benchmarks/gpu_check.py                    # transformers sampling, then vLLM colocate when vLLM imports
    python benchmarks/gpu_check.py --out runs/gpu-check --prompts 128 --max-new-tokens 256
    python benchmarks/gpu_check.py --smoke            # CPU, tiny model, fp32: checks the script itself (tests do)

An offline GPU machine with only torch, transformers, accelerate and peft: on a networked machine run
`make gpu-wheels` (trl, deepspeed, datasets and their small dependencies into wheels/, ~18 MiB; pyarrow into
wheels-arrow/, ~53 MiB, a transfer of its own where the machine lacks it), copy the checkout with them, then
`pip install --no-index --no-deps wheels/*.whl [wheels-arrow/*.whl]` there. The checkout's code is imported as is.

Each run writes a recipe, launches `accelerate launch -m autoif_train.train` on it (ZeRO-3, 1 process), polls
`nvidia-smi` for the GPU's memory, and prints per sampler: optimizer-step time, sampling tokens/s, weight-sync
seconds, the measured peak against the plan's train and sample peaks. `report.json` in --out holds the same.
Not covered: multi-GPU collectives (one process), real model weights (random init samples noise of full length).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's autoif_train, installed or not
TOKENIZER = ROOT / "tests" / "data" / "tokenizer"
# passes about half of any text (random weights sample noise), so every prompt gives pairs
VERIFIER = "def evaluate(response):\n    return sum(map(ord, response)) % 2 == 0\n"
TOPICS = ["the sea", "a city at night", "autumn", "a robot", "mountains", "coffee", "a library", "rain"]


def build_model(folder: Path, smoke: bool) -> Path:
    """A random Llama: ~0.5B parameters (hidden 1280, 24 layers, vocab 32000) in bf16, or a tiny fp32 one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok)) if smoke else dict(
        hidden_size=1280, intermediate_size=3456, num_hidden_layers=24, num_attention_heads=20,
        num_key_value_heads=4, vocab_size=32000)
    config = LlamaConfig(**size, max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if smoke else torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_inputs(work: Path, model: Path, args, use_vllm: bool, smoke: bool) -> Path:
    prompts = work / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(args.prompts):
            text = f"Write a short poem about {TOPICS[i % len(TOPICS)]} (number {i})."
            f.write(json.dumps({"id": f"p{i}", "prompt": text, "verifiers": [VERIFIER]}) + "\n")
    recipe = {
        "stage": "online_dpo", "model_name_or_path": str(model), "dataset_path": str(prompts),
        "output_dir": str(work / ("vllm" if use_vllm else "transformers")), "num_rounds": 1,
        "prompts_per_round": args.prompts, "num_samples": args.samples, "max_new_tokens": args.max_new_tokens,
        "temperature": 1.0, "truncated_samples": "keep", "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-6, "max_length": 512 + args.max_new_tokens, "generation_batch_size": args.prompts,
        "use_vllm": use_vllm, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
        "vllm_max_model_length": 512 + args.max_new_tokens, "vllm_enforce_eager": smoke,
        "gradient_checkpointing": not smoke, "bf16": not smoke, "dtype": "float32" if smoke else "bfloat16",
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "verifier_workers": 4, "seed": 0,
        "accelerate_config": str(ROOT / "accelerate_configs" / ("cpu_zero3.yaml" if smoke else "zero3.yaml")),
    }
    path = work / f"recipe_{'vllm' if use_vllm else 'transformers'}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class GPUMemoryPoll:
    """Peak `nvidia-smi` memory.used of GPU 0 while the training process runs (None without nvidia-smi)."""

    def __init__(self):
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        if shutil.which("nvidia-smi") is None:
            return
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                                  os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                used = int(out.stdout.split()[0])
                self.peak_mib = max(self.peak_mib or 0, used)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def predicted(recipe: Path, smoke: bool) -> dict:
    """`autoif plan`'s per-GPU peaks (GiB) for this recipe on one GPU of the visible size."""
    from autoif_train.planning import GiB, plan_recipe
    from autoif_train.planning.memory import SAMPLE, TRAIN

    memory = 80 * GiB
    if not smoke:
        import torch

        memory = torch.cuda.get_device_properties(0).total_memory
    plan = plan_recipe(str(recipe), nodes=1, gpus_per_node=1, gpu_memory=memory,
                       accelerate_config=str(ROOT / "accelerate_configs" / "zero3.yaml"))
    peaks = {phase: plan.peak(phase) / GiB for phase in plan.phases}
    return {"fits": plan.fits, "train_gib": peaks.get(TRAIN), "sample_gib": peaks.get(SAMPLE),
            "budget_gib": plan.budget / GiB, "gpu_gib": memory / GiB}


def run_one(recipe: Path, smoke: bool, timeout: int) -> dict:
    """Launch one training run; its round record plus the measured peak and wall time."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    config = ROOT / "accelerate_configs" / ("cpu_zero3.yaml" if smoke else "zero3.yaml")
    cmd = [accelerate, "launch", "--config_file", str(config), "--num_processes", "1", "-m", "autoif_train.train",
           "--config", str(recipe)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.time()
    log = recipe.with_suffix(".log")
    with GPUMemoryPoll() as poll, log.open("w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"gpu_check: training failed (rc {proc.returncode}); log {log}:\n{tail}")
    import yaml

    run_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    record = json.loads((run_dir / "rounds" / "round_0000" / "complete.json").read_text())
    return {"record": record, "peak_mib": poll.peak_mib, "wall_seconds": wall, "log": str(log)}


def summarize(name: str, result: dict, plan: dict) -> dict:
    rec = result["record"]
    tokens = rec.get("mean_completion_tokens", 0) * rec.get("samples", 0)
    gen = rec.get("generation_seconds") or 0.0
    steps = rec.get("train_steps") or 0
    peak = result["peak_mib"] / 1024 if result["peak_mib"] else rec.get("peak_gpu_memory_gib")
    return {
        "sampler": name, "pairs": rec.get("pairs"), "train_steps": steps,
        "step_seconds": rec["training_seconds"] / steps if steps else None,
        "sampling_tokens_per_s": tokens / gen if gen else None, "weight_sync_seconds": rec.get("weight_sync_seconds"),
        "measured_peak_gib": peak, "torch_peak_gib": rec.get("peak_gpu_memory_gib"),
        "plan_train_gib": plan["train_gib"], "plan_sample_gib": plan["sample_gib"], "plan_fits": plan["fits"],
        "wall_seconds": result["wall_seconds"],
    }


def _fmt(value, spec=".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(args) -> dict:
    work = Path(args.out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = build_model(work / "model", args.smoke)
    samplers = [False]
    try:
        import vllm  # noqa: F401

        samplers.append(True)
    except ImportError:
        print("gpu_check: vLLM does not import here: transformers sampling only")
    rows = []
    for use_vllm in samplers:
        recipe = write_inputs(work, model, args, use_vllm, args.smoke)
        plan = predicted(recipe, args.smoke)
        rows.append(summarize("vllm colocate" if use_vllm else "transformers", run_one(recipe, args.smoke,
                                                                                      args.timeout), plan))
    report = {"smoke": args.smoke, "prompts": args.prompts, "samples": args.samples,
              "max_new_tokens": args.max_new_tokens, "results": rows}
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'sampler':<15} {'step s':>7} {'sample tok/s':>12} {'sync s':>7} {'peak GiB':>9} {'plan train':>10} "
          f"{'plan sample':>11} {'measured/plan':>13}")
    for r in rows:
        plan_peak = max(x for x in (r["plan_train_gib"], r["plan_sample_gib"]) if x is not None)
        ratio = r["measured_peak_gib"] / plan_peak if r["measured_peak_gib"] else None
        print(f"{r['sampler']:<15} {_fmt(r['step_seconds']):>7} {_fmt(r['sampling_tokens_per_s'], '.0f'):>12} "
              f"{_fmt(r['weight_sync_seconds']):>7} {_fmt(r['measured_peak_gib']):>9} {_fmt(r['plan_train_gib']):>10} "
              f"{_fmt(r['plan_sample_gib']):>11} {_fmt(ratio):>13}")
    print(f"report: {work / 'report.json'}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="per-device train batch (pairs per micro-batch)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per training run")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny fp32 model: check the script itself")
    return parser


if __name__ == "__main__":
    parsed = build_parser().parse_args()
    if parsed.smoke:
        parsed.prompts, parsed.samples, parsed.max_new_tokens = min(parsed.prompts, 6), 2, 8
    main(parsed)
