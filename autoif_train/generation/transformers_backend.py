"""transformers backend: batched `generate` with left padding and the tokenizer's chat template.

Prompts are sorted by length and cut into batches of `batch_size` prompts; each batch makes all `n` samples from one
prompt prefill (`generate_shared_prefill`), so a call issues ceil(len(prompts) / batch_size) `generate` calls.
Sampling is seeded per batch (seed + batch index), so results do not depend on other work in the process. fp32 on
CPU, bf16 on a GPU that supports it. Not protected against: prompts longer than the model's context (they are
left-truncated to `max_prompt_tokens`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from autoif_train.generation.base import GenerationConfig, GenerationError, Generator, Prompt, apply_stop, to_messages
from autoif_train.generation.shared_prefill import generate_shared_prefill


def _resolve(model: str) -> str:
    """Embedded model names (e.g. `smollm2-135m-instruct`) become their prepared local path."""
    try:
        from autoif_train.models import resolve_model
    except ImportError:
        return model
    return resolve_model(model)


class TransformersGenerator(Generator):
    """Generate with a local or hub causal LM (`model` is a path, hub id or embedded model name)."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        max_prompt_tokens: int = 2048,
        progress: bool = True,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.progress = progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            use_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        path = _resolve(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code
            ).to(self.device)
        except OSError as err:
            raise GenerationError(f"cannot load model {model!r} (resolved to {path!r}): {err}") from err
        self.model.eval()
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context:
            self.max_prompt_tokens = min(max_prompt_tokens, context)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(f"tokenizer of {model!r} has no chat template; use an instruct/chat model")

    def _encode(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.max_prompt_tokens :]

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        encoded = [self._encode(to_messages(p)) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[list[str] | None] = [None] * len(prompts)
        greedy = config.temperature == 0
        samples_per_call = 1 if greedy else config.n
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pad_id = self.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        for b, batch in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.progress or not batches)):
            if config.seed is not None:
                torch.manual_seed(config.seed + b)
            longest = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, longest - len(ids) :] = 1
            kwargs = dict(max_new_tokens=config.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos)
            if greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
            out = generate_shared_prefill(
                self.model, input_ids.to(self.device), attention.to(self.device), samples_per_call, **kwargs
            )
            texts = self.tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                chunk = texts[row * samples_per_call : (row + 1) * samples_per_call]
                chunk = [apply_stop(t, config.stop) for t in chunk]
                results[i] = chunk * config.n if greedy else chunk
        return [r if r is not None else [] for r in results]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
