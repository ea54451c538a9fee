"""Online-DPO round training vs TRL's plain DPOTrainer, side by side in one run, on the same pairs, model and settings.

Usage:
    python benchmarks/train_throughput.py                    # embedded SmolLM2-135M, the shipped quickstart round-0 pairs
    python benchmarks/train_throughput.py --round runs/quickstart/online_dpo/rounds/round_0000
        [--recipe recipes/quickstart/online_dpo.yaml] [--model smollm2-135m-instruct] [--steps N] [--order trl-first]
        [--json OUT.json]

Both trainers take the recipe's settings (quickstart: 4 pairs x 2 accumulation steps per optimizer step, sigmoid +
0.2 sft, beta 0.1, max_length 320, fp32 on CPU) and train the same pairs in the same micro-batches: the first
`--steps` optimizer steps of the round, in the order its schedule visits them (default: every full step; the
shipped round has 52 pairs, so 6 steps of 8).
- project: `AutoIFOnlineDPOTrainer` trains them as its round 0, the pairs planned on disk beforehand (no sampling):
  its reference pass over the distinct sequences, then its steps (`dedupe_sequences`, `share_prompts` as the
  recipe says, default on);
- TRL: `trl.DPOTrainer` on the same token ids in the project's visit order (`train_sampling_strategy:
  sequential`), its own reference forward in every step.
Each side runs in a fresh interpreter (run in one process, both sides were slower and their times depended on
their order by up to 15%). Timed: every optimizer step after the first (a warm-up), plus, for the project, its reference
pass prorated to the timed steps' share of the pairs. Prints pairs/s of each, the ratio, and both runs' mean loss and reward margin over
the timed steps (the same steps of the same model, so they agree to float rounding).
The shipped pairs (`benchmarks/data/quickstart_round0_pairs.jsonl`) are the quickstart's round 0 (seed 0,
2026-12-02 code), token ids only; their prompts are rows of the recipe's `dataset_path`.
Not protected against: other load on the machine (the two runs are sequential; `--order` swaps them).
"""

from __future__ import annotations

import argparse
import gc
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
PAIRS = REPO / "benchmarks" / "data" / "quickstart_round0_pairs.jsonl"
TRL_FIELDS = (  # the recipe's settings that TRL's DPOTrainer takes as they are
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "max_grad_norm", "beta", "loss_type", "loss_weights", "max_length",
    "truncation_mode", "gradient_checkpointing", "bf16", "seed", "disable_dropout", "label_smoothing",
    "f_divergence_type", "use_weighting", "model_init_kwargs",
)


def _timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Time at the end of each optimizer step."""

        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimer()


def _timed_logs(history: list[dict]) -> dict:
    logs = [log for log in history if "loss" in log and log.get("step", 0) >= 2]
    return {key: sum(log[key] for log in logs) / len(logs) if logs else None
            for key in ("loss", "rewards/margins")}


def load_pairs(round_dir: str | None) -> list[dict]:
    path = Path(round_dir) / "pairs.jsonl" if round_dir else PAIRS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def setup(recipe: str, model: str, out: str):
    from autoif_train.configs import parse_recipe
    from autoif_train.models import resolve_model
    from autoif_train.train import model_init_kwargs

    path = resolve_model(model)
    script_args, args, model_args = parse_recipe(recipe, [
        "--model_name_or_path", path, "--output_dir", out, "--num_rounds", "1", "--logging_steps", "1",
        "--report_to", "none", "--eval_every_round", "false", "--save_total_limit", "1"])
    args.model_init_kwargs = model_init_kwargs(model_args)
    return path, script_args, args


def run_project(path: str, args, rows, pairs: list[dict], steps: int) -> dict:
    """The project's round training on `pairs` (planned as round 0 on disk): reference pass, then its steps."""
    from transformers import AutoTokenizer

    from autoif_train.training.online_dpo import AutoIFOnlineDPOTrainer

    trainer = AutoIFOnlineDPOTrainer(model=path, args=args, prompts=rows,
                                     processing_class=AutoTokenizer.from_pretrained(path))
    plan = {"round": 0, "prompt_start": 0, "prompt_end": len(rows), "prompts": len(rows), "pairs": len(pairs),
            "start_step": 0, "steps": steps}
    trainer.store.save_plan(0, [], [], pairs, plan)
    timer = _timer()
    trainer.add_callback(timer)
    trainer.train()
    trainer.close()
    record = trainer.store.completed()[0]
    result = {"ends": timer.ends, "reference_s": record.get("reference_seconds", 0.0),
              "dedupe": trainer.dedupe, "share_prompts": trainer.share_prompts, **_timed_logs(trainer.state.log_history)}
    del trainer
    gc.collect()
    return result


def run_trl(path: str, args, examples: list[dict], steps: int, out: str) -> dict:
    """TRL's DPOTrainer on the same token ids, in the given order, `steps` optimizer steps."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=out, max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
                       train_sampling_strategy="sequential", **{k: getattr(args, k) for k in TRL_FIELDS})
    placeholder = Dataset.from_list([{"prompt": [{"role": "user", "content": "a"}],
                                      "chosen": [{"role": "assistant", "content": "b"}],
                                      "rejected": [{"role": "assistant", "content": "c"}]}])
    trainer = DPOTrainer(model=path, args=config, train_dataset=placeholder,
                         processing_class=AutoTokenizer.from_pretrained(path))
    trainer.train_dataset = Dataset.from_list(examples)  # token ids as sampled, never re-encoded
    timer = _timer()
    trainer.add_callback(timer)
    trainer.train()
    result = {"ends": timer.ends, "reference_s": 0.0, **_timed_logs(trainer.state.log_history)}
    del trainer
    gc.collect()
    return result


def prepare(opts, out: str) -> dict:
    """The model path, recipe settings, the round's first `steps` steps' pairs and their prompts, TRL's examples."""
    from transformers import AutoTokenizer

    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.generation.chat import encode_prompt
    from autoif_train.training.schedule import visit_order

    path, script_args, args = setup(opts.recipe, opts.model, out)
    pairs = load_pairs(opts.round)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    full = visit_order(len(pairs), args.epochs_per_round, seed=args.seed * 7919)  # the round's own order
    steps = opts.steps or len(full) // per_step
    if steps < 2 or steps * per_step > len(full):
        raise SystemExit(f"--steps {steps}: needs 2..{len(full) // per_step} (the round has {len(pairs)} pairs, "
                         f"{per_step} per step)")
    subset = [pairs[i] for i in full[: steps * per_step]]
    bundle = str(REPO / script_args.verifier_bundle) if script_args.verifier_bundle else None
    by_id = {row.id: row for row in load_prompt_rows(str(REPO / script_args.dataset_path), bundle)}
    rows = [by_id[pid] for pid in dict.fromkeys(p["prompt_id"] for p in subset)]
    tok = AutoTokenizer.from_pretrained(path)
    prompt_ids = {row.id: encode_prompt(tok, row.messages) for row in rows}
    # the order the project's round visits its pairs in: TRL gets its examples in that order
    order = visit_order(len(subset), args.epochs_per_round, seed=args.seed * 7919)
    examples = [{"prompt_ids": prompt_ids[subset[i]["prompt_id"]], "chosen_ids": subset[i]["chosen_ids"],
                 "rejected_ids": subset[i]["rejected_ids"]} for i in order]
    return {"path": path, "args": args, "pairs": len(pairs), "subset": subset, "rows": rows, "examples": examples,
            "steps": steps, "per_step": per_step}


def run_side(opts) -> dict:
    """One side, in this process."""
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        job = prepare(opts, os.path.join(tmp, "project"))
        print(f"--- {opts.side}: {job['steps']} optimizer steps of {job['per_step']} pairs", flush=True)
        if opts.side == "trl":
            run = run_trl(job["path"], job["args"], job["examples"], job["steps"], os.path.join(tmp, "trl"))
        else:
            run = run_project(job["path"], job["args"], job["rows"], job["subset"], job["steps"])
    import torch

    return dict(run, model=Path(job["path"]).name, pairs=job["pairs"], steps=job["steps"], per_step=job["per_step"],
                threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", default=None, help="a RoundStore round folder (pairs.jsonl); default: shipped")
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or model folder")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps of each (the first is a warm-up); "
                                                             "0 = every full step of the round")
    parser.add_argument("--order", choices=("trl-first", "project-first"), default="trl-first")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--side", choices=("trl", "project"), default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.side:  # a worker: one side, its figures as JSON to --json
        Path(opts.json).write_text(json.dumps(run_side(opts)))
        return {}

    runs = {}
    passed = ["--recipe", opts.recipe, "--model", opts.model, "--steps", str(opts.steps)]
    passed += ["--round", opts.round] if opts.round else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        for name in (("trl", "project") if opts.order == "trl-first" else ("project", "trl")):
            result = os.path.join(tmp, f"{name}.json")
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *passed, "--side", name, "--json", result],
                           check=True, env=env)
            runs[name] = json.loads(Path(result).read_text())

    first = runs["trl"]
    steps, per_step = first["steps"], first["per_step"]
    timed_pairs = (steps - 1) * per_step
    for run in runs.values():
        run["steps_s"] = run["ends"][-1] - run["ends"][0]
        run["timed_s"] = run["steps_s"] + run["reference_s"] * (steps - 1) / steps
        run["pairs_per_s"] = timed_pairs / run["timed_s"]
    ratio = runs["project"]["pairs_per_s"] / runs["trl"]["pairs_per_s"]
    print(f"\ntrain throughput: {first['model']}, {platform.processor() or platform.machine()}, {first['threads']} "
          f"threads, {first['pairs']} pairs in the round, {steps} steps x {per_step} pairs each, timed steps "
          f"2..{steps} ({timed_pairs} pairs), each side in a fresh interpreter, {opts.order}")
    for name, label in (("trl", "TRL DPOTrainer (pairwise)"), ("project", "autoif round training")):
        run = runs[name]
        extra = f" (reference pass {run['reference_s']:.1f} s, prorated)" if name == "project" else ""
        print(f"  {label:28s} {run['pairs_per_s']:6.3f} pairs/s  {run['timed_s']:7.1f} s{extra}  "
              f"loss {run['loss']:.4f}  margin {run['rewards/margins']:.4f}")
    print(f"  ratio (project / TRL)        {ratio:6.2f}x   dedupe_sequences={runs['project']['dedupe']} "
          f"share_prompts={runs['project']['share_prompts']}")
    figures = {"model": first["model"], "steps": steps, "pairs_per_step": per_step, "timed_pairs": timed_pairs,
               "order": opts.order, "ratio": ratio,
               **{f"{name}_{k}": v for name, run in runs.items() for k, v in run.items()
                  if k not in ("ends", "model", "pairs", "steps", "per_step", "threads")}}
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
