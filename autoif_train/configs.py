"""Configuration dataclasses for every training stage, and the one parser that reads recipes.

Recipes are YAML files whose keys are the field names below (plus TRL's and transformers' own
fields inherited through `SFTConfig` / `DPOConfig` / `ModelConfig`), read by `core.recipes`. Command-line flags
override the YAML. An unknown key is an error that names the file, the key and the closest known field.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig, TrlParser

from autoif_train.core.errors import RecipeError
from autoif_train.core.recipes import field_help, own_fields, resolve, split_argv
from autoif_train.data.pairs import PairRuleFields
from autoif_train.rewards.base import RewardError, RewardFields
from autoif_train.sandbox.settings import SandboxArgs

STAGES = ("sft", "dpo", "online_dpo", "grpo")




@dataclass
class ScriptArguments:
    """What to train on; shared by every stage.

    Parameters:
        stage: `sft` (TRL SFTTrainer on `messages`), `dpo` (TRL DPOTrainer on `prompt/chosen/rejected`),
            `online_dpo` (AutoIF iterative online DPO on prompts + verifiers) or `grpo` (TRL GRPOTrainer on the
            same prompts and rewards).
        dataset_path: a local JSONL/JSON/parquet file or folder, or a hub dataset id.
        dataset_split: split to read when `dataset_path` is a hub id or a `datasets` folder.
        eval_dataset_path: optional held-out data in the same format (online DPO: prompt rows with verifiers,
            scored after every round when `eval_every_round` is set).
        verifier_bundle: JSONL of `{"id", "code"}` verifiers that online-DPO prompt rows may reference by id.
        max_train_samples: keep only the first N training rows (smoke runs).
        accelerate_config: read by `launch.sh` only (which accelerate config to launch with).
        force: start even when the pre-flight memory plan (`autoif plan`) says the recipe does not fit.
        plan_gpu_memory: memory per GPU the pre-flight plan assumes (e.g. `80GB`); default: the visible GPU's.
            On a machine without a GPU the check runs only when this is given.
    """

    stage: str = field(default="sft", metadata={"help": f"One of {', '.join(STAGES)}."})
    dataset_path: str | None = field(default=None, metadata={"help": "Local file/folder or hub dataset id."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Optional held-out data."})
    verifier_bundle: str | None = field(
        default=None, metadata={"help": "JSONL of {id, code} verifiers that prompt rows may reference by id."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows."})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "Read by launch.sh only: name under accelerate_configs/ or a path."}
    )
    force: bool = field(default=False, metadata={"help": "Start even if the memory plan says it does not fit."})
    plan_gpu_memory: str | None = field(
        default=None, metadata={"help": "GPU memory the pre-flight plan assumes, e.g. 80GB (default: the GPU's)."}
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise RecipeError(f"stage must be one of {STAGES}, got {self.stage!r}")


def _resolve_precision(config) -> None:
    """bf16 on a CUDA GPU that supports it, fp32 elsewhere, unless the recipe set `bf16` explicitly.

    Also picks the gloo backend for DeepSpeed launched on CPU-only machines: without it accelerate finds no
    backend and every rank believes it is alone (world size 1), which breaks DeepSpeed's batch-size check.
    """
    import torch

    if config.bf16 is None:
        config.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    deepspeed_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if config.ddp_backend is None and launched and deepspeed_env and not torch.cuda.is_available():
        config.ddp_backend = "gloo"


def _check_rewards(config) -> None:
    """`RewardFields.check_reward_fields` as a `RecipeError` naming the field."""
    try:
        config.check_reward_fields()
    except RewardError as err:
        raise RecipeError(None, None, err.field, err.message) from err


@dataclass
class AutoIFSFTConfig(SFTConfig):
    """TRL `SFTConfig` with AutoIF's defaults: loss on assistant tokens only (paper: lr 7e-6, 3 epochs)."""

    assistant_only_loss: bool = field(default=True, metadata={"help": "Loss on assistant tokens only."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 training; unset = bf16 on GPU, fp32 on CPU."})

    def __post_init__(self):
        _resolve_precision(self)
        super().__post_init__()


@dataclass
class AutoIFDPOConfig(DPOConfig):
    """TRL `DPOConfig` with the paper's DPO settings as defaults (sigmoid loss, beta 0.3)."""

    beta: float = field(default=0.3, metadata={"help": "DPO beta (paper: 0.3)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 training; unset = bf16 on GPU, fp32 on CPU."})

    def __post_init__(self):
        _resolve_precision(self)
        super().__post_init__()


@dataclass
class VLLMEngineFields:
    """What autoif-train adds to TRL's vLLM settings, for online DPO and GRPO alike (`generation.vllm_policy`)."""

    vllm_enforce_eager: bool = field(default=True, metadata={"help": "Skip graph compilation (CPU)."})
    vllm_sync_bucket_mb: float = field(
        default=512.0, metadata={"help": "MiB of ZeRO-3 parameters gathered per collective in a weight push (0: one "
                                         "tensor per gather)."}
    )


@dataclass
class OnlineDPOConfig(AutoIFDPOConfig, PairRuleFields, RewardFields, VLLMEngineFields):
    """AutoIF iterative online DPO: sample K responses per prompt, score with the `rewards` (default: the prompts'
    verifier code, sandboxed; pool keys from `SandboxArgs`), build pairs with the pair rule (`data.pairs`:
    `chosen_threshold`, `rejected_threshold`, `max_chosen`, `max_rejected`, `truncated_samples`, `pair_ranking`),
    train (`dedupe_sequences`, `share_prompts`: each distinct sequence and prompt computed once, `training.sequences`).
    """

    num_rounds: int = field(default=3, metadata={"help": "Online rounds (stops early when prompts run out)."})
    prompts_per_round: int = field(
        default=64, metadata={"help": "Training prompts consumed per round (with pairs_per_round: per chunk drawn)."})
    pairs_per_round: int | None = field(
        default=None, metadata={"help": "Draw prompts in order until this many pairs exist and train on exactly "
                                        "these: every round's step count, hence the whole schedule, is known."})
    rollout_chunk_prompts: int | None = field(
        default=None, metadata={"help": "Prompts sampled and scored per durable chunk (a kill loses at most one); "
                                        "default prompts_per_round."})
    lr_schedule_scope: str = field(
        default="auto", metadata={"help": "global (warm-up/decay over all rounds; needs pairs_per_round unless "
                                          "constant) | round (per round) | auto."})
    num_samples: int = field(default=8, metadata={"help": "Responses sampled per prompt (K)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 = off (the same on vLLM and transformers)."})
    min_p: float = field(default=0.0, metadata={"help": "Min-p sampling; 0 = off."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty; 1.0 = off."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum tokens per sampled response."})
    stop_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Extra ids that end a sample, on top of the eos / generation_config eos / "
                                        "chat template end-of-turn union."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra sampling keywords (vLLM SamplingParams / transformers generate), a "
                                        "mapping in YAML or a JSON string on the command line."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    epochs_per_round: float = field(default=1.0, metadata={"help": "DPO epochs over each round's pairs."})
    use_vllm: bool = field(default=False, metadata={"help": "Sample with vLLM instead of transformers."})
    vllm_mode: str = field(default="colocate", metadata={"help": "colocate | server."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "vLLM GPU memory share (ignored on CPU: VLLM_CPU_KVCACHE_SPACE GiB, default 1)."}
    )
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "vLLM context length (model's)."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel size (colocate)."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Offload vLLM weights/KV while training."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "trl vllm-serve URL (server mode)."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Seconds to wait for the server."})
    eval_every_round: bool = field(default=False, metadata={"help": "Held-out verifier pass rate each round."})
    dedupe_sequences: bool = field(
        default=True, metadata={"help": "Forward each distinct (prompt, response) sequence of a micro-batch once, "
                                        "with reference log-probs computed once per round and stored "
                                        "(reference.jsonl): TRL's losses and gradients, less compute; false = TRL's "
                                        "pairwise forward."})
    share_prompts: bool = field(
        default=True, metadata={"help": "With dedupe_sequences: forward each distinct prompt once and reuse its "
                                        "key/value cache for its responses (the reference always; the policy on "
                                        "one process without gradient_checkpointing)."})

    def __post_init__(self):
        import json

        if isinstance(self.generation_kwargs, str):
            try:
                self.generation_kwargs = json.loads(self.generation_kwargs)
            except json.JSONDecodeError as err:
                raise RecipeError(f"generation_kwargs must be a mapping (JSON on the command line): {err}") from err
        if self.generation_kwargs is not None and not isinstance(self.generation_kwargs, dict):
            raise RecipeError(f"generation_kwargs must be a mapping, got {type(self.generation_kwargs).__name__}")
        try:
            self.pair_rule()
        except ValueError as err:
            raise RecipeError(str(err)) from err
        _check_rewards(self)
        for name in ("num_rounds", "prompts_per_round", "num_samples", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise RecipeError(None, None, name, f"must be >= 1, got {getattr(self, name)}")
        if self.pairs_per_round is not None and self.pairs_per_round < 1:
            raise RecipeError(f"pairs_per_round must be >= 1 (or unset), got {self.pairs_per_round}")
        if self.rollout_chunk_prompts is not None and self.rollout_chunk_prompts < 1:
            raise RecipeError(f"rollout_chunk_prompts must be >= 1 (or unset), got {self.rollout_chunk_prompts}")
        if self.lr_schedule_scope not in ("auto", "global", "round"):
            raise RecipeError(f"lr_schedule_scope must be auto, global or round, got {self.lr_schedule_scope!r}")
        if self.top_k < 0 or not 0 <= self.min_p < 1 or self.repetition_penalty <= 0:
            raise RecipeError("top_k must be >= 0, min_p in [0, 1) and repetition_penalty > 0")
        if self.dedupe_sequences and (self.ld_alpha is not None or self.sync_ref_model):
            raise RecipeError(None, None, "dedupe_sequences", "needs ld_alpha unset and sync_ref_model false (their "
                              "reference terms are per pair or change); set dedupe_sequences: false")
        self.check_sandbox()
        super().__post_init__()


@dataclass
class AutoIFGRPOConfig(GRPOConfig, RewardFields, VLLMEngineFields):
    """TRL `GRPOConfig` whose reward is the recipe's `rewards` (default: the prompts' verifier code, sandboxed);
    `reward_weights` weigh those rewards (one per name), not TRL reward functions. With `use_vllm`, generation and
    weight pushes go through `generation.vllm_policy` (CPU-aware engine, bucketed ZeRO-3 sync)."""

    bf16: bool | None = field(default=None, metadata={"help": "bf16 training; unset = bf16 on GPU, fp32 on CPU."})

    def __post_init__(self):
        _resolve_precision(self)
        _check_rewards(self)
        self.check_sandbox()
        super().__post_init__()


STAGE_CONFIGS: dict[str, type] = {"sft": AutoIFSFTConfig, "dpo": AutoIFDPOConfig, "online_dpo": OnlineDPOConfig,
                                  "grpo": AutoIFGRPOConfig}


TRAINING_FIELDS = (  # the TrainingArguments fields shown by `autoif train --help` (--help-all lists every one)
    "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "gradient_checkpointing", "lr_scheduler_type", "warmup_ratio", "logging_steps",
    "save_steps", "save_total_limit", "seed", "bf16", "report_to",
)
MODEL_FIELDS = ("model_name_or_path", "dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha")


def stage_types(stage: str) -> tuple[type, type, type]:
    return (ScriptArguments, STAGE_CONFIGS[stage], ModelConfig)


def parse_train_args(args: list[str] | None = None):
    """Parse `[--config] RECIPE.yaml [--field value ...]` into (ScriptArguments, stage config, ModelConfig).

    The stage (from `--stage` or the recipe) picks the training config class. Keys and values are checked by
    `core.recipes` (unknown keys, types; file and line named); TRL's `HfArgumentParser.parse_dict` builds the
    dataclasses. `--help` prints `train_help()` and exits 0.
    """
    recipe = split_argv(list(sys.argv[1:] if args is None else args))
    if recipe.help or recipe.help_all:
        print(train_help(full=recipe.help_all))
        raise SystemExit(0)
    stage = recipe.overrides.get("stage", recipe.values.get("stage", "sft"))
    if stage not in STAGE_CONFIGS:
        raise recipe.error("stage", f"must be one of {', '.join(STAGES)}, got {stage!r}")
    values = resolve(recipe, stage_types(stage))
    try:
        return TrlParser(stage_types(stage)).parse_dict(values, allow_extra_keys=False)
    except RecipeError as err:
        if err.path is None:
            raise RecipeError(recipe.path or "command line", None, err.field, err.message) from err
        raise
    except (ValueError, TypeError) as err:  # TrainingArguments' own checks (e.g. incompatible settings)
        raise RecipeError(recipe.path or "command line", None, None, str(err)) from err


def parse_recipe(path: str, overrides: list[str] | None = None):
    """Parse one recipe file (used by tests and tools that validate recipes without training)."""
    return parse_train_args(["--config", path, *(overrides or [])])


def train_help(full: bool = False) -> str:
    """`autoif train --help`: usage and examples first, then the fields grouped by stage."""
    lines = [
        "usage: autoif train [--config] RECIPE.yaml [--field value ...]",
        "",
        "Train one recipe; its `stage:` (sft | dpo | online_dpo | grpo) picks the trainer. Flags override the",
        "recipe's keys (`--learning_rate 1e-5` or `--learning-rate=1e-5`); booleans take `true`/`false` or stand",
        "alone.",
        "",
        "examples:",
        "  autoif train recipes/tiny/sft.yaml",
        "  autoif train --config recipes/quickstart/online_dpo.yaml --num_rounds 2 --output_dir runs/try",
        "  ./launch.sh recipes/qwen2-7b/online_dpo.yaml          # multi-GPU through accelerate",
        "",
        "what to train on (every stage):",
        *field_help(ScriptArguments),
        "",
        "model (every stage; TRL ModelConfig):",
        *field_help(ModelConfig, None if full else list(MODEL_FIELDS)),
        "",
        "online_dpo (AutoIF iterative online DPO; also takes every dpo field):",
        *field_help(OnlineDPOConfig, own_fields(OnlineDPOConfig) + own_fields(PairRuleFields)),
        "",
        "rewards (online_dpo and grpo; verifier code runs in the sandboxed pool):",
        *field_help(OnlineDPOConfig, own_fields(RewardFields) + own_fields(SandboxArgs)),
        "",
        "grpo (TRL GRPOConfig rewarded by `rewards`; --help-all lists every GRPOConfig field):",
        *field_help(AutoIFGRPOConfig, own_fields(AutoIFGRPOConfig) + ([] if not full else own_fields(GRPOConfig))),
        "",
        "vllm (online_dpo and grpo, on top of TRL's vllm_* fields):",
        *field_help(OnlineDPOConfig, own_fields(VLLMEngineFields)),
        "",
        "dpo (TRL DPOConfig; AutoIF defaults):",
        *field_help(AutoIFDPOConfig, own_fields(AutoIFDPOConfig) + ([] if not full else own_fields(DPOConfig))),
        "",
        "sft (TRL SFTConfig; AutoIF defaults):",
        *field_help(AutoIFSFTConfig, own_fields(AutoIFSFTConfig) + ([] if not full else own_fields(SFTConfig))),
        "",
        "training (transformers TrainingArguments, every stage):",
        *field_help(AutoIFSFTConfig, None if full else list(TRAINING_FIELDS)),
    ]
    if not full:
        lines += ["", "`autoif train --help-all` lists every TRL and transformers field."]
    return "\n".join(lines)
