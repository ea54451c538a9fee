"""Train one recipe: SFT, offline DPO, AutoIF iterative online DPO or GRPO (the recipe's `stage:` picks which).

Usage:
    python -m autoif_train.train --config recipes/tiny/sft.yaml [--field value ...]
    autoif train recipes/tiny/online_dpo.yaml --num_rounds 2      # `autoif train --help`: the fields by stage
    accelerate launch --config_file accelerate_configs/cpu_zero3.yaml -m autoif_train.train --config RECIPE.yaml
    ./launch.sh recipes/qwen2-7b/online_dpo.yaml          # multi-GPU, accelerate config from the recipe

SFT is TRL's SFTTrainer on conversational `messages` (loss on assistant tokens only); offline DPO is TRL's
DPOTrainer on `prompt / chosen / rejected`; online DPO is `autoif_train.training.online_dpo` (DPOTrainer's loss and frozen
reference model, data from the policy's own verified samples); GRPO is `autoif_train.training.grpo` (TRL's
GRPOTrainer, rewarded by the same rewards, `autoif_train.rewards`). SFT, DPO and GRPO resume from the last `checkpoint-*` in
`output_dir`; online DPO resumes after its last complete round. LoRA via `use_peft: true`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from autoif_train.configs import parse_train_args
from autoif_train.core.errors import RecipeError, run_command
from autoif_train.resources import resolve_shipped

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `main` produced: the stage, the saved model folder, Trainer metrics and (online DPO) one record per round."""

    stage: str
    output_dir: str
    metrics: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)


def model_init_kwargs(model_args) -> dict:
    """`from_pretrained` keyword arguments from the recipe's model fields (dtype default: float32)."""
    kwargs = {"dtype": model_args.dtype or "float32", "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def _checkpoint_to_resume(training_args) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint

    return get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None


def _tokenizer(model_args):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _dataset(rows: list[dict], columns: tuple[str, ...], limit: int | None):
    from datasets import Dataset

    rows = rows[:limit] if limit else rows
    return Dataset.from_list([{c: row[c] for c in columns} for row in rows])


def _check_sft_loss_mask(training_args, columns: tuple[str, ...], tokenizer, model: str) -> None:
    """Loss on the assistant's tokens only, whatever the chat template: `prompt`/`completion` rows get TRL's
    completion-only loss (`assistant_only_loss` is then not needed and is turned off); `messages` rows need a
    template with `{% generation %}` markers or one TRL can patch, else a RecipeError says what to change."""
    from trl.chat_template_utils import get_training_chat_template

    if not training_args.assistant_only_loss:
        return
    if columns == ("prompt", "completion"):
        logger.info("SFT: prompt/completion rows, loss on the completion only (TRL completion_only_loss)")
        training_args.assistant_only_loss = False
        if training_args.completion_only_loss is False:
            raise RecipeError(None, None, "completion_only_loss", "is false while assistant_only_loss is true; for "
                              "prompt/completion rows the completion is the assistant turn, so set one of them")
        return
    try:
        get_training_chat_template(tokenizer)
    except (ValueError, TypeError):
        raise RecipeError(None, None, "assistant_only_loss", f"{model}'s chat template has no {{% generation %}} "
                          "markers and TRL cannot patch it, so assistant tokens cannot be masked: write the rows as "
                          "`prompt` + `completion` (loss on the completion), or set assistant_only_loss: false "
                          "(loss on every token)") from None


def train_offline(script_args, training_args, model_args) -> TrainResult:
    """SFT (`stage: sft`) or offline DPO (`stage: dpo`) with TRL's trainers."""
    from trl import DPOTrainer, SFTTrainer, get_peft_config

    from autoif_train.data.rows import load_dpo_rows, load_sft_rows, sft_columns

    # ----- Load datasets (validated before any model is loaded)
    sft = script_args.stage == "sft"
    load, trainer_cls = (load_sft_rows, SFTTrainer) if sft else (load_dpo_rows, DPOTrainer)
    rows = load(script_args.dataset_path, script_args.dataset_split)
    columns = sft_columns(rows) if sft else ("prompt", "chosen", "rejected")
    train_ds = _dataset(rows, columns, script_args.max_train_samples)
    eval_ds = None
    if script_args.eval_dataset_path:
        eval_rows = load(script_args.eval_dataset_path, script_args.dataset_split)
        if sft and sft_columns(eval_rows) != columns:
            raise RecipeError(None, None, "eval_dataset_path", f"{script_args.eval_dataset_path} has "
                              f"{'/'.join(sft_columns(eval_rows))} rows, the training data {'/'.join(columns)} rows")
        eval_ds = _dataset(eval_rows, columns, None)
    tokenizer = _tokenizer(model_args)
    if sft:
        _check_sft_loss_mask(training_args, columns, tokenizer, model_args.model_name_or_path)

    # ----- Train
    training_args.model_init_kwargs = model_init_kwargs(model_args)
    trainer = trainer_cls(
        model=model_args.model_name_or_path, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, peft_config=get_peft_config(model_args),
    )
    output = trainer.train(resume_from_checkpoint=_checkpoint_to_resume(training_args))

    # ----- Save
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training_args.output_dir)
    return TrainResult(script_args.stage, training_args.output_dir, metrics=dict(output.metrics))


def preflight_plan(script_args, training_args, model_args) -> None:
    """`autoif plan`'s check before any weights load: refuse a recipe over the GPU memory budget unless `force`.

    Runs on GPU machines (the visible GPU's memory) or when `plan_gpu_memory` is given; every rank reaches the
    same verdict. A model whose config the planner cannot find is reported and not checked."""
    import torch

    from autoif_train.planning.inputs import check_fits, parse_memory, require_fit
    from autoif_train.planning.model_shape import PlanInputError

    if script_args.plan_gpu_memory is None and not torch.cuda.is_available():
        logger.info("memory plan: no GPU, not checked (plan_gpu_memory: 80GB checks a GPU budget)")
        return
    memory = parse_memory(script_args.plan_gpu_memory) if script_args.plan_gpu_memory else None
    try:
        plan = check_fits(script_args, training_args, model_args, gpu_memory=memory)
    except PlanInputError as err:
        logger.warning("memory plan: not checked: %s", err)
        return
    require_fit(plan, force=script_args.force)
    peak = max(plan.peak(phase) for phase in plan.phases)
    logger.info("memory plan: %s: peak %.1f of %.1f GiB per GPU", "fits" if plan.fits else "DOES NOT FIT (--force)",
                peak / 2**30, plan.budget / 2**30)


def main(script_args, training_args, model_args) -> TrainResult:
    """Run the recipe's stage and return what it produced."""
    from autoif_train.models import resolve_model

    if not script_args.dataset_path:
        raise RecipeError("the recipe needs `dataset_path` (training data file, folder or hub id)")
    if not model_args.model_name_or_path:
        raise RecipeError("the recipe needs `model_name_or_path` (a local folder, hub id or embedded model name)")
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)  # checks a local folder exists
    for name in ("dataset_path", "eval_dataset_path", "verifier_bundle"):
        setattr(script_args, name, resolve_shipped(getattr(script_args, name)))  # `verifiers/...` in recipes
    preflight_plan(script_args, training_args, model_args)
    if script_args.stage == "online_dpo":
        from autoif_train.training.online_dpo import run_online_dpo

        result = run_online_dpo(script_args, training_args, model_args, model_init_kwargs(model_args))
        return TrainResult("online_dpo", result.output_dir, rounds=result.rounds)
    if script_args.stage == "grpo":
        from autoif_train.training.grpo import run_grpo

        result = run_grpo(script_args, training_args, model_args, model_init_kwargs(model_args))
        return TrainResult("grpo", result.output_dir, metrics=result.metrics)
    return train_offline(script_args, training_args, model_args)


def _run(argv: list[str]) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    script_args, training_args, model_args = parse_train_args(argv)
    main(script_args, training_args, model_args)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_command("autoif train", _run, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
