"""The one generation interface every backend implements: batched prompts in, `n` completions per prompt out.

A backend receives all requests of a call at once and batches them itself; callers never loop over prompts.
`GenerationConfig` is the one set of sampling settings: `transformers_kwargs` and `vllm_kwargs` below are the only
places that translate it, so `top_k=0` (off), `top_p`, `min_p`, `repetition_penalty` and the stop ids mean the same
on every backend. `Completion` is the record a token-level backend returns per sample (ids, text, finish reason).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from autoif_train.core.errors import AutoIFError

Messages = list[dict[str, str]]
Prompt = str | Messages


class GenerationError(AutoIFError, RuntimeError):
    """A backend could not produce completions (bad model path, endpoint refused, retries exhausted, ...)."""


@dataclass
class GenerationConfig:
    """Sampling settings shared by all backends.

    Parameters:
        n: completions per prompt.
        temperature: 0 means greedy (then the `n` completions are identical copies).
        top_p: nucleus sampling.
        max_new_tokens: upper bound on generated tokens per completion.
        top_k: keep the k most likely tokens; 0 = off (transformers' own default of 50 is never inherited).
        min_p: drop tokens below `min_p` x the top token's probability; 0 = off.
        repetition_penalty: 1.0 = off.
        max_new_tokens: upper bound on generated tokens per completion.
        seed: base seed; backends derive per-batch / per-request seeds from it so results do not depend on timing.
        stop: optional stop strings (cut from the completion).
        stop_token_ids: ids that end a completion, on top of the model's end-of-turn ids
            (`autoif_train.generation.chat.end_of_turn_ids`, which token-level backends always add).
        generation_kwargs: extra backend keywords (vLLM `SamplingParams` / transformers `generate`), passed as is.
    """

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = 0
    stop: list[str] | None = field(default=None)
    stop_token_ids: list[int] | None = field(default=None)
    generation_kwargs: dict[str, Any] | None = field(default=None)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"GenerationConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"GenerationConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"GenerationConfig.min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"GenerationConfig.repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transformers_kwargs(config: GenerationConfig, stop_ids: list[int], pad_token_id: int) -> dict[str, Any]:
    """`model.generate` keywords for `config`. Every sampling knob is set explicitly, so nothing falls back to the
    model's generation_config (whose `top_k` is 50 and whose `eos_token_id` may lack the chat end-of-turn)."""
    kwargs: dict[str, Any] = dict(max_new_tokens=config.max_new_tokens, pad_token_id=pad_token_id,
                                  eos_token_id=list(stop_ids), repetition_penalty=config.repetition_penalty)
    if config.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
    else:
        kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                      min_p=config.min_p or None)
    kwargs.update(config.generation_kwargs or {})
    return kwargs


def vllm_kwargs(config: GenerationConfig, stop_ids: list[int]) -> dict[str, Any]:
    """`vllm.SamplingParams` keywords for `config` (vLLM: top_k 0 or -1 = off, min_p 0 = off), `n` excluded."""
    kwargs: dict[str, Any] = dict(
        temperature=config.temperature, top_p=1.0 if config.greedy else config.top_p,
        top_k=0 if config.greedy else config.top_k, min_p=0.0 if config.greedy else config.min_p,
        repetition_penalty=config.repetition_penalty, max_tokens=config.max_new_tokens,
        stop_token_ids=list(stop_ids), stop=config.stop, skip_special_tokens=True,
    )
    kwargs.update(config.generation_kwargs or {})
    return kwargs


@dataclass
class Completion:
    """One sampled completion: its token ids (ending with the stop id when it stopped), decoded text (special
    tokens skipped), `finish_reason` "stop" (an end-of-turn id was sampled) or "length" (cut at max_new_tokens)."""

    token_ids: list[int]
    text: str
    finish_reason: str

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "completion_ids": self.token_ids, "finish_reason": self.finish_reason,
                "num_tokens": self.num_tokens}


def resolve_model_path(model: str) -> str:
    """Embedded model names (e.g. `smollm2-135m-instruct`) become their prepared local path; others are unchanged."""
    try:
        from autoif_train.models import resolve_model
    except ImportError:
        return model
    return resolve_model(model)


def to_messages(prompt: Prompt) -> Messages:
    """A chat message list for `prompt`: plain strings become one user turn; message lists are checked and copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise TypeError(f"a prompt must be a string or a non-empty list of chat messages, got {type(prompt).__name__}")
    out = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TypeError(f"prompt message {i} must be a dict with 'role' and 'content', got {message!r}")
        out.append({"role": str(message["role"]), "content": str(message["content"])})
    return out


def apply_stop(text: str, stop: list[str] | None) -> str:
    """Cut `text` at the first occurrence of any stop string."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class Generator(ABC):
    """A text generator. Use as a context manager or call `close()` to free the model / connections."""

    name: str = "base"

    @abstractmethod
    def generate(self, prompts: list[Prompt], config: GenerationConfig | None = None) -> list[list[str]]:
        """Return `config.n` completions for every prompt, in prompt order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
