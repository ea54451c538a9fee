"""GRPO on the online-DPO prompt rows and rewards: TRL's `GRPOTrainer`, with the recipe's `rewards` as its reward.

The same prompt rows (`verifiers` as code or bundle ids, and/or IFEval-style constraint ids), the same registry
(`autoif_train.rewards`) and the same sandbox: `RewardFunction` is one TRL reward function whose value for a
completion is the combined pass rate online DPO pairs on. TRL calls it on each rank for that rank's completions, so
scoring is spread over the ranks, each scoring in its own `VerifierPool` sized to its share of the host
(`sandbox.settings.host_pool_settings`); verifier code never runs in the trainer process. An unscored completion (no
check returned a result: every verifier timed out, crashed or was disabled) gets None, which TRL turns into NaN and
leaves out of the group's reward. Completions end at every end-of-turn id (`generation.chat.end_of_turn_ids`), not
only the tokenizer's eos. vLLM (colocate or server), ZeRO-3, LoRA and checkpoint resume are TRL's.

`reward_scoring` does not apply (TRL calls the reward on every rank for its own completions). Not protected
against: a verifier that is slow on some responses and fast on others is judged per rank (its strikes are counted
in that rank's pool), so on several ranks it may be disabled later than on one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOTrainer

from autoif_train.core.io import write_jsonl
from autoif_train.data.rows import PromptRow

logger = logging.getLogger(__name__)


class RewardFunction:
    """A TRL reward function (`prompts, completions, row_index, ...) -> [float | None]`) over the registry's rewards.

    `row_index` is the dataset column naming each completion's prompt row in `rows`."""

    def __init__(self, rows: list[PromptRow], args, weights: list[float] | None = None):
        self.rows, self.args, self.weights = rows, args, weights
        self.__name__ = "+".join(args.rewards)  # TRL logs rewards/<name>/mean
        self._reward = None
        self.last_scores = None

    def reward(self):
        if self._reward is None:
            self._reward = self.args.recipe_reward(self.weights)  # verifier code: this rank's own sandbox pool
        return self._reward

    def __call__(self, prompts, completions, row_index, **kwargs) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = self.reward().score([self.rows[i] for i in row_index], texts)
        self.last_scores = scores
        return scores.pass_rates

    def close(self) -> None:
        if self._reward is not None:
            self._reward.close()  # and its verifier pool
            self._reward = None


class AutoIFGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer whose completions end at every end-of-turn id (eos, generation config, chat template).

    With `use_vllm`, TRL's `VLLMGeneration` is replaced by the project's (`generation.vllm_policy.generation_class`):
    the colocated engine starts with the CPU-aware settings of `generation.vllm_engine`, weight pushes gather ZeRO-3
    shards `vllm_sync_bucket_mb` MiB at a time and merge LoRA per module, and on CPU the push reloads in place.
    """

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args")
        if config is None or not config.use_vllm:
            super().__init__(*args, **kwargs)
        else:
            import functools

            import trl.trainer.grpo_trainer as trl_grpo

            from autoif_train.generation.vllm_engine import check_max_model_len, require_vllm
            from autoif_train.generation.vllm_policy import generation_class

            require_vllm("use_vllm: true")
            if config.vllm_mode == "colocate":
                check_max_model_len(str(kwargs["model"]), config.vllm_max_model_length)
            trl_class = trl_grpo.VLLMGeneration  # TRL builds it by this module-level name in __init__
            trl_grpo.VLLMGeneration = functools.partial(
                generation_class(), extra_engine_kwargs={"enforce_eager": config.vllm_enforce_eager},
                sync_bucket_mb=config.vllm_sync_bucket_mb)
            try:
                super().__init__(*args, **kwargs)
            finally:
                trl_grpo.VLLMGeneration = trl_class
        from autoif_train.generation.chat import end_of_turn_ids

        ids = end_of_turn_ids(self._tokenizer, self.model.generation_config)
        self.eos_token_ids = ids  # TRL's completion mask and truncation check read these
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.eos_token_id = ids
        if isinstance(getattr(self, "generation_kwargs", None), dict):
            self.generation_kwargs["eos_token_id"] = ids


@dataclass
class GRPOResult:
    """What a run produced: the final model folder and the trainer's metrics."""

    output_dir: str
    metrics: dict = field(default_factory=dict)


def run_grpo(script_args, training_args, model_args, model_init_kwargs: dict) -> GRPOResult:
    """Load and check the prompt rows, build TRL's GRPOTrainer on the registry's rewards, train (resuming from the
    newest checkpoint in `output_dir`), save the final policy."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.generation.chat import end_of_turn_ids
    from autoif_train.rewards.base import check_prompt_rewards
    from autoif_train.train import _checkpoint_to_resume

    # ----- Prompts (all validation before any model is loaded)
    prompts = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle, script_args.dataset_split)
    if script_args.max_train_samples:
        prompts = prompts[: script_args.max_train_samples]
    check_prompt_rewards(training_args, prompts, script_args.dataset_path)
    dataset = Dataset.from_list([{"prompt": row.messages, "row_index": i} for i, row in enumerate(prompts)])

    # ----- Trainer: one reward function, the registry's weighted pass rate (TRL's reward_weights would re-weight it)
    weights, training_args.reward_weights = training_args.reward_weights, None
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if training_args.use_vllm:  # vLLM stops at the model's eos; add the chat template's end of turn
        from transformers import GenerationConfig

        try:
            gen = GenerationConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        except OSError:
            gen = None
        training_args.generation_kwargs = {"stop_token_ids": end_of_turn_ids(tokenizer, gen),
                                           **(training_args.generation_kwargs or {})}
    training_args.model_init_kwargs = model_init_kwargs
    reward_fn = RewardFunction(prompts, training_args, weights)
    trainer = AutoIFGRPOTrainer(
        model=model_args.model_name_or_path, reward_funcs=[reward_fn], args=training_args, train_dataset=dataset,
        processing_class=tokenizer, peft_config=get_peft_config(model_args),
    )
    try:
        output = trainer.train(resume_from_checkpoint=_checkpoint_to_resume(training_args))
    finally:
        reward_fn.close()

    # ----- Save (the log history, restored with a checkpoint on resume, feeds `autoif report`)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        write_jsonl(Path(training_args.output_dir) / "train_log.jsonl", trainer.state.log_history)
    return GRPOResult(training_args.output_dir, dict(output.metrics))
