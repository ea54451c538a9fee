"""The one generation interface every backend implements: batched prompts in, `n` completions per prompt out.

A backend receives all requests of a call at once and batches them itself; callers never loop over prompts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

Messages = list[dict[str, str]]
Prompt = str | Messages


class GenerationError(RuntimeError):
    """A backend could not produce completions (bad model path, endpoint refused, retries exhausted, ...)."""


@dataclass
class GenerationConfig:
    """Sampling settings shared by all backends.

    Parameters:
        n: completions per prompt.
        temperature: 0 means greedy (then the `n` completions are identical copies).
        top_p: nucleus sampling.
        max_new_tokens: upper bound on generated tokens per completion.
        seed: base seed; backends derive per-batch / per-request seeds from it so results do not depend on timing.
        stop: optional stop strings (cut from the completion).
    """

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = 0
    stop: list[str] | None = field(default=None)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"GenerationConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"GenerationConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
