"""transformers backend: batched `generate` with left padding and the tokenizer's chat template.

`sample_completions` is the one transformers sampling loop: the synthesis/evaluation generator below and the
online-DPO policy sampler (`autoif_train.generation.policy`) both call it. Prompts are sorted by length and cut
into batches of `batch_size` prompts; each batch makes all `n` samples from one prompt prefill
(`generate_shared_prefill`), so a call issues ceil(len(prompts) / batch_size) `generate` calls. Generation stops
on every end-of-turn id (`generation.chat.end_of_turn_ids`). The generator seeds per batch (seed + batch index),
so results do not depend on other work in the process. fp32 on CPU, bf16 on a GPU that supports it. Not protected
against: prompts longer than the model's context (they are left-truncated to `max_prompt_tokens`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from autoif_train.generation.base import (
    Completion,
    GenerationConfig,
    GenerationError,
    Generator,
    Prompt,
    apply_stop,
    resolve_model_path,
    transformers_kwargs,
)
from autoif_train.generation.chat import encode_prompts, end_of_turn_ids, make_completion, require_chat_template
from autoif_train.generation.shared_prefill import generate_shared_prefill


@torch.no_grad()
def sample_completions(model, tokenizer, prompt_ids: list[list[int]], config: GenerationConfig, stop_ids: list[int],
                       batch_size: int, device, progress: bool = False) -> list[list[Completion]]:
    """`config.n` completions per prompt (token ids in, `Completion` records out, in prompt order) with
    `model.generate`: prompts sorted by length, left-padded in batches of `batch_size`, each prompt prefilled once
    for its n samples. Seeded per batch (seed + batch index) when `config.seed` is set; otherwise it draws from the
    process's torch RNG. Greedy runs once per prompt and repeats the result n times."""
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[Completion]] = [[] for _ in prompt_ids]
    per_call = 1 if config.greedy else config.n
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    kwargs = transformers_kwargs(config, stop_ids, pad_id)
    for b, batch in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not progress or not batches,
                                   leave=False)):
        if config.seed is not None:
            torch.manual_seed(config.seed + b)
        longest = max(len(prompt_ids[i]) for i in batch)
        input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompt_ids[i]
            input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, longest - len(ids) :] = 1
        out = generate_shared_prefill(model, input_ids.to(device), attention.to(device), per_call, **kwargs)
        generated = out[:, longest:].tolist()
        for row, i in enumerate(batch):
            chunk = [make_completion(tokenizer, ids, stop_ids, config.max_new_tokens)
                     for ids in generated[row * per_call : (row + 1) * per_call]]
            results[i] = chunk * config.n if config.greedy else chunk
    return results


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
        path = resolve_model_path(model)
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
        require_chat_template(self.tokenizer, model)

    def complete(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[Completion]]:
        """`config.n` `Completion` records per prompt (text, token ids, finish reason), stop strings not applied."""
        config = config or GenerationConfig()
        encoded = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        stop_ids = end_of_turn_ids(self.tokenizer, self.model.generation_config, config.stop_token_ids)
        return sample_completions(self.model, self.tokenizer, encoded, config, stop_ids, self.batch_size,
                                  self.device, self.progress)

    def generate(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[str]]:
        config = config or GenerationConfig()
        return [[apply_stop(c.text, config.stop) for c in row] for row in self.complete(prompts, config)]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
