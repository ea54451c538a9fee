"""Policy sampling inside the online-DPO trainer: K responses per prompt from the current weights.

`build_sampler(trainer, config)` returns the vLLM sampler (`autoif_train.vllm_sampling`, imported only when
`use_vllm` is set) or `TransformersSampler`, which calls `generate` on the trainer's own model. Under DeepSpeed
ZeRO-3 it gathers the full parameters on every rank for the duration of sampling (TRL's
`unwrap_model_for_generation`), so every rank must call `sample` together; it does not shard the gathered copy,
so the whole model must fit on one device while sampling.
"""

from __future__ import annotations

from typing import Protocol

import torch
from tqdm.auto import tqdm
from trl.models.utils import unwrap_model_for_generation

from autoif_train.generation.shared_prefill import generate_shared_prefill


class PolicySampler(Protocol):
    def sample(self, prompts: list[list[dict]], num_samples: int) -> list[list[str]]: ...

    def sync_weights(self) -> None: ...


class TransformersSampler:
    """Samples with `model.generate` (temperature / top_p / max_new_tokens from the config), in prompt batches; each
    prompt is prefilled once for its K samples (`generate_shared_prefill`)."""

    def __init__(self, trainer, config):
        self.trainer = trainer
        self.config = config
        self.tokenizer = trainer.processing_class

    def sync_weights(self) -> None:
        """Nothing to do: generation reads the trainer's live parameters."""

    @torch.no_grad()
    def sample(self, prompts: list[list[dict]], num_samples: int) -> list[list[str]]:
        cfg, tok, trainer = self.config, self.tokenizer, self.trainer
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        out: list[list[str]] = []
        padding_side = tok.padding_side
        tok.padding_side = "left"
        batch = max(1, cfg.generation_batch_size)
        show = trainer.accelerator.is_local_main_process
        try:
            with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
                was_training = model.training
                model.eval()
                for start in tqdm(range(0, len(texts), batch), desc="sampling", disable=not show, leave=False):
                    enc = tok(texts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = {k: v.to(trainer.accelerator.device) for k, v in enc.items()}
                    gen = generate_shared_prefill(
                        model, enc["input_ids"], enc["attention_mask"], num_samples,
                        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    )
                    decoded = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                    out += [decoded[i : i + num_samples] for i in range(0, len(decoded), num_samples)]
                model.train(was_training)
        finally:
            tok.padding_side = padding_side
        return out


def build_sampler(trainer, config) -> PolicySampler:
    """The vLLM sampler when `config.use_vllm`, else `TransformersSampler`."""
    if getattr(config, "use_vllm", False):
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "use_vllm: true needs vLLM: `pip install -e '.[vllm]'` (GPU) or use the .venv-vllm environment; "
                "or set use_vllm: false to sample with transformers"
            ) from err
        from autoif_train.vllm_sampling import build_vllm_sampler

        return build_vllm_sampler(trainer, config)
    return TransformersSampler(trainer, config)
