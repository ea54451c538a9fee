"""What a plan is made from: the recipe (through `parse_recipe`), its accelerate config, the launch environment.

`plan_recipe(path, ...)` is what `autoif plan` runs; `check_fits(script_args, training_args, model_args)` is the same
plan from already-parsed arguments, for `autoif train` to call before it loads weights (hardware from the
`accelerate launch` environment and the visible GPU).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import yaml

from autoif_train.configs import RecipeError, parse_recipe
from autoif_train.core.io import read_json
from autoif_train.core.recipes import read_recipe
from autoif_train.planning.memory import GiB, Hardware, Plan, Settings, plan_memory
from autoif_train.planning.model_shape import PlanInputError, resolve_shape
from autoif_train.resources import bundled

HALF_PRECISION = ("bfloat16", "bf16", "float16", "fp16", "half")


class DoesNotFitError(RecipeError):
    """The recipe's plan is over the GPU memory budget (raised by `Plan`-checking callers; `--force` skips it)."""


def parse_memory(text: str) -> int:
    """'80GB', '80GiB', '141G' or '80' (GiB) -> bytes. A GPU sold as '80GB' holds ~80 GiB, so GB reads as GiB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib|m|mb|mib|t|tb|tib)?\s*", str(text).lower())
    if not match:
        raise PlanInputError(f"--gpu-memory: cannot read {text!r} (examples: 80GB, 141GiB, 24)")
    value, unit = float(match.group(1)), (match.group(2) or "g")[0]
    size = int(value * {"m": 2**20, "g": GiB, "t": 2**40}[unit])
    if size <= 0:
        raise PlanInputError(f"--gpu-memory must be positive, got {text!r}")
    return size


def accelerate_config_path(name: str) -> Path:
    """A path, or a NAME under accelerate_configs/ (as launch.sh resolves it)."""
    for candidate in (Path(name), bundled("accelerate_configs") / f"{name.removesuffix('.yaml')}.yaml",
                      Path("accelerate_configs") / f"{name.removesuffix('.yaml')}.yaml"):
        if candidate.is_file():
            return candidate
    raise PlanInputError(f"accelerate config not found: {name} (a path, or a name under accelerate_configs/)")


def hardware_from_accelerate(name: str | None) -> Hardware:
    """Nodes, GPUs per node, ZeRO stage and offload from an accelerate config; one process when there is none."""
    if not name:
        return Hardware(nodes=1, gpus_per_node=1, distributed="single", zero_stage=0)
    path = accelerate_config_path(name)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PlanInputError(f"{path}: not valid YAML: {err}") from err
    machines = int(cfg.get("num_machines") or 1)
    processes = int(cfg.get("num_processes") or machines)
    kind = str(cfg.get("distributed_type", "NO")).upper()
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    base = dict(nodes=machines, gpus_per_node=max(1, processes // machines), accelerate_config=shown)
    if kind == "DEEPSPEED":
        ds = cfg.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        off_opt, off_par = ds.get("offload_optimizer_device"), ds.get("offload_param_device")
        if ds.get("deepspeed_config_file"):
            zero = read_json(ds["deepspeed_config_file"]).get("zero_optimization", {})
            stage = zero.get("stage")
            off_opt = (zero.get("offload_optimizer") or {}).get("device")
            off_par = (zero.get("offload_param") or {}).get("device")
        return Hardware(distributed="deepspeed", zero_stage=int(stage or 0),
                        offload_optimizer=str(off_opt or "none").lower() not in ("none", ""),
                        offload_params=str(off_par or "none").lower() not in ("none", ""),
                        zero_init=bool(ds.get("zero3_init_flag", True)), **base)
    if kind in ("MULTI_GPU", "NO"):
        return Hardware(distributed="ddp" if processes > 1 else "single", zero_stage=0, **base)
    raise PlanInputError(f"{path}: distributed_type {kind} is not planned (DEEPSPEED, MULTI_GPU or NO)")


def hardware_from_environment(script_args, gpu_memory: int | None = None) -> Hardware:
    """The hardware of a running `accelerate launch`: world size, ZeRO stage and offload from its environment."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    env = os.environ.get
    if env("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if env("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            zero = read_json(env("ACCELERATE_DEEPSPEED_CONFIG_FILE")).get("zero_optimization", {})
            stage = zero.get("stage", 0)
            off_opt, off_par = [(zero.get(k) or {}).get("device", "none")
                                for k in ("offload_optimizer", "offload_param")]
        else:
            stage = env("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
            off_opt = env("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
            off_par = env("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")
        setup = dict(distributed="deepspeed", zero_stage=int(stage),
                     offload_optimizer=str(off_opt) not in ("none", ""),
                     offload_params=str(off_par) not in ("none", ""))
    elif world > 1:
        setup = dict(distributed="ddp", zero_stage=0)
    else:
        setup = dict(distributed="single", zero_stage=0)
    if gpu_memory is None:
        import torch

        if torch.cuda.is_available():
            gpu_memory = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", 0))).total_memory
    if setup["distributed"] == "single" and script_args.accelerate_config and "LOCAL_RANK" not in os.environ:
        # not launched yet (e.g. a pre-flight check): plan for the accelerate config the recipe names
        return replace(hardware_from_accelerate(script_args.accelerate_config), gpu_memory=gpu_memory or 80 * GiB)
    return Hardware(nodes=max(1, world // max(1, local)), gpus_per_node=max(1, local),
                    gpu_memory=gpu_memory or 80 * GiB, **setup)


def settings_from_args(script_args, training_args, model_args, weight_bytes: int | None = None,
                       prompt_tokens: int = 256) -> Settings:
    """`Settings` from parsed recipe arguments; weights are 2 bytes under bf16/fp16 or a half-precision dtype."""
    if weight_bytes is None:
        half = training_args.bf16 or training_args.fp16 or str(model_args.dtype).lower() in HALF_PRECISION
        weight_bytes = 2 if half else 4
    get = lambda name, default: getattr(training_args, name, default)  # noqa: E731 - SFT/DPO lack the online fields
    fields = dict(
        stage=script_args.stage, weight_bytes=weight_bytes, use_peft=bool(model_args.use_peft),
        lora_r=model_args.lora_r or 16, per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        max_length=get("max_length", None) or 1024, gradient_checkpointing=bool(training_args.gradient_checkpointing),
        use_vllm=get("use_vllm", False), vllm_mode=get("vllm_mode", "colocate"),
        vllm_tensor_parallel_size=get("vllm_tensor_parallel_size", 1),
        vllm_gpu_memory_utilization=get("vllm_gpu_memory_utilization", 0.3),
        vllm_enable_sleep_mode=get("vllm_enable_sleep_mode", False),
        vllm_max_model_length=get("vllm_max_model_length", None),
        vllm_sync_bucket_mb=get("vllm_sync_bucket_mb", 512.0),
        generation_batch_size=get("generation_batch_size", 16), num_samples=get("num_samples", 8),
        max_new_tokens=get("max_new_tokens", 256), prompts_per_round=get("prompts_per_round", 64),
        max_chosen=get("max_chosen", 2), max_rejected=get("max_rejected", 2),
        epochs_per_round=get("epochs_per_round", 1.0), verifier_workers=get("verifier_workers", 2),
        prompt_tokens=prompt_tokens,
    )
    if script_args.stage == "grpo":
        fields.update(grpo_settings(training_args))
    return Settings(**fields)


def grpo_settings(training_args) -> dict:
    """GRPO's sampling in `Settings` terms: K = num_generations, each rank samples per_device_train_batch_size x
    steps_per_generation completions per generation batch in one call, a reference model only when beta > 0."""
    steps = training_args.steps_per_generation or training_args.gradient_accumulation_steps
    completions = training_args.per_device_train_batch_size * steps
    return {"num_samples": training_args.num_generations, "max_new_tokens": training_args.max_completion_length,
            "rank_completions": completions, "generation_batch_size": completions,
            "reference": training_args.beta != 0.0, "max_chosen": 1, "max_rejected": 1,
            # TRL does not truncate GRPO prompts: a sequence is the prompt + completion, capped by vLLM's context
            "max_length": training_args.vllm_max_model_length or 2**31}


def check_fits(script_args, training_args, model_args, *, hardware: Hardware | None = None,
               model_config: str | None = None, recipe_path: str | None = None, prompt_tokens: int = 256,
               margin: float = 0.05, gpu_memory: int | None = None) -> Plan:
    """The memory plan of already-parsed arguments (for `autoif train`, before any weights are loaded).

    Hardware defaults to the running launch (`WORLD_SIZE`, `LOCAL_WORLD_SIZE`, accelerate's DeepSpeed variables, the
    visible GPU's memory). The model's shape comes from `model_config`, the local model folder, a shipped config, or
    the sibling recipe that writes `model_name_or_path` (`recipe_path`). Raises `PlanInputError` when no config is
    found; check `plan.fits` (and `plan.problems`, `plan.breaking`, `plan.fixes`) for the verdict.
    """
    shape = resolve_shape(model_args.model_name_or_path, recipe_path, model_config)
    hw = hardware or hardware_from_environment(script_args, gpu_memory)
    settings = settings_from_args(script_args, training_args, model_args, prompt_tokens=prompt_tokens)
    return plan_memory(shape, settings, hw, margin)


def require_fit(plan: Plan, force: bool = False) -> Plan:
    """Raise `DoesNotFitError` (one line: what breaks, the first fix, `--force`) unless the plan fits or `force`."""
    if plan.fits or force:
        return plan
    fix = f"; would fit with: {plan.fixes[0]}" if plan.fixes else ""
    raise DoesNotFitError(f"memory plan: does not fit: {'; '.join(plan.problems)}; the term that breaks it: "
                          f"{plan.breaking}{fix} (see `autoif plan RECIPE.yaml`; --force starts anyway)")


def plan_recipe(recipe_path: str, *, nodes: int | None = None, gpus_per_node: int | None = None,
                gpu_memory: int = 80 * GiB, model_config: str | None = None, accelerate_config: str | None = None,
                prompt_tokens: int = 256, margin: float = 0.05, overrides: list[str] | None = None,
                gpu_tflops: float | None = None, hbm_tbps: float | None = None) -> Plan:
    """Plan a recipe file (what `autoif plan` prints). Flags left as None come from the recipe's accelerate config."""
    raw = read_recipe(recipe_path).values
    if "stage" not in raw:
        raise PlanInputError(f"{recipe_path}: not a training recipe (no `stage:` key)")
    overrides = list(overrides or [])
    half = bool(raw.get("bf16") or raw.get("fp16")) or str(raw.get("dtype", "")).lower() in HALF_PRECISION
    # bf16/fp16 recipes target GPUs; TrainingArguments refuses them on a CPU-only machine, so parse with them off
    forced = [flag for key in ("bf16", "fp16") if raw.get(key) for flag in (f"--{key}", "false")]
    try:
        script_args, training_args, model_args = parse_recipe(recipe_path, [*forced, *overrides])
    except (ValueError, TypeError) as err:  # TrainingArguments' own checks; RecipeError names the file already
        if isinstance(err, RecipeError):
            raise
        raise PlanInputError(f"{recipe_path}: {err}") from err
    if not model_args.model_name_or_path:
        raise PlanInputError(f"{recipe_path}: the recipe needs `model_name_or_path`")
    hw = hardware_from_accelerate(accelerate_config or script_args.accelerate_config)
    changes = {"gpu_memory": gpu_memory}
    for key, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("gpu_tflops", gpu_tflops),
                       ("hbm_tbps", hbm_tbps)):
        if value is not None:
            if value <= 0:
                raise PlanInputError(f"--{key.replace('_', '-')} must be positive, got {value}")
            changes[key] = value
    hw = replace(hw, **changes)
    if hw.world > 1 and hw.distributed == "single":
        hw = replace(hw, distributed="ddp")
    shape = resolve_shape(model_args.model_name_or_path, recipe_path, model_config)
    settings = settings_from_args(script_args, training_args, model_args, weight_bytes=2 if half else 4,
                                  prompt_tokens=prompt_tokens)
    return plan_memory(shape, settings, hw, margin)
