"""Policy samplers for the online-DPO trainer: K `Completion` records per prompt from the current weights.

A policy sampler is a generator plus `sync_weights()`. `build_policy_sampler(trainer, config)` returns the vLLM
policy (`autoif_train.generation.vllm_policy`, imported only when `use_vllm` is set) or `TransformersPolicy`,
which runs the transformers backend's sampling loop (`sample_completions`) on the trainer's own model. Both take
prompt token ids from `generation.chat.encode_prompt`, sample with the same `GenerationConfig` semantics and stop
on every end-of-turn id, so a sample's ids are exactly what training uses.

`policy_generation_config(config)` builds that `GenerationConfig` from the trainer's recipe fields. Every rank must
call `sample` with the same number of prompts (the trainer pads shares to equal size): under DeepSpeed ZeRO-3
`TransformersPolicy` gathers the full parameters on every rank while sampling (TRL's `unwrap_model_for_generation`),
so the whole model must fit on one device; it does not shard the gathered copy.
"""

from __future__ import annotations

from typing import Protocol

import torch
from trl.models.utils import unwrap_model_for_generation

from autoif_train.generation.base import Completion, GenerationConfig
from autoif_train.generation.chat import end_of_turn_ids
from autoif_train.generation.transformers_backend import sample_completions


class PolicySampler(Protocol):
    stop_ids: list[int]
    max_model_len: int | None  # prompt + completion positions the sampler can hold (None: unknown)

    def sample(self, prompt_ids: list[list[int]], num_samples: int) -> list[list[Completion]]: ...

    def sync_weights(self) -> None: ...


def policy_generation_config(config, num_samples: int = 1) -> GenerationConfig:
    """The sampling settings of an online-DPO config (temperature, top_p, top_k, min_p, repetition_penalty,
    max_new_tokens, stop_token_ids, generation_kwargs); unseeded, so each rank draws from its own RNG."""
    return GenerationConfig(
        n=num_samples, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, min_p=config.min_p,
        repetition_penalty=config.repetition_penalty, max_new_tokens=config.max_new_tokens, seed=None,
        stop_token_ids=list(config.stop_token_ids or []) or None, generation_kwargs=config.generation_kwargs,
    )


class TransformersPolicy:
    """Samples with `model.generate` on the trainer's live model (prompt batches of `generation_batch_size`)."""

    def __init__(self, trainer, config):
        self.trainer = trainer
        self.config = config
        self.tokenizer = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.stop_ids = end_of_turn_ids(self.tokenizer, getattr(model, "generation_config", None),
                                        config.stop_token_ids)
        self.max_model_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def sync_weights(self) -> None:
        """Nothing to do: generation reads the trainer's live parameters."""

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], num_samples: int) -> list[list[Completion]]:
        trainer = self.trainer
        config = policy_generation_config(self.config, num_samples)
        show = trainer.accelerator.is_local_main_process
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            was_training = model.training
            model.eval()
            try:
                return sample_completions(model, self.tokenizer, prompt_ids, config, self.stop_ids,
                                          max(1, self.config.generation_batch_size), trainer.accelerator.device, show)
            finally:
                model.train(was_training)


def build_policy_sampler(trainer, config) -> PolicySampler:
    """The vLLM policy when `config.use_vllm`, else `TransformersPolicy`."""
    if getattr(config, "use_vllm", False):
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "use_vllm: true needs vLLM: `pip install -e '.[vllm]'` (GPU) or use the .venv-vllm environment; "
                "or set use_vllm: false to sample with transformers"
            ) from err
        from autoif_train.generation.vllm_policy import VLLMPolicy

        return VLLMPolicy(trainer, config)
    return TransformersPolicy(trainer, config)
