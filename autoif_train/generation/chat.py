"""The one chat encoder, the end-of-turn ids, and how a sampled token sequence becomes a `Completion`.

Every backend and the trainer encode a prompt with `encode_prompt` (chat template + generation prompt, no extra
special tokens), so the ids a policy sampled from are the ids training puts in front of the completion.

A chat model ends its turn with the chat template's end-of-turn token, which is often not the tokenizer's eos:
Qwen2 ends a turn with `<|im_end|>` (eos `<|endoftext|>`), Llama-3 with `<|eot_id|>` (eos `<|end_of_text|>`).
`end_of_turn_ids` is the union of the tokenizer's eos, the model's generation_config eos list and the template's
end-of-turn token (found by rendering a one-turn conversation), as TRL's GRPO / online-DPO trainers do. Not
protected against: templates whose end-of-turn is plain text rather than one special token (it is then not found;
pass it as `stop_token_ids`).
"""

from __future__ import annotations

from collections.abc import Iterable

from autoif_train.generation.base import Completion, GenerationError, Prompt, to_messages

_PROBE = "autoif end of turn probe"


def encode_prompt(tokenizer, messages: list[dict], max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of `messages` rendered with the chat template and the assistant generation prompt; left-truncated
    to `max_prompt_tokens` when given."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-max_prompt_tokens:] if max_prompt_tokens else ids


def encode_prompts(tokenizer, prompts: list[Prompt], max_prompt_tokens: int | None = None) -> list[list[int]]:
    """`encode_prompt` of each prompt (a string is one user turn: `base.to_messages`)."""
    return [encode_prompt(tokenizer, to_messages(p), max_prompt_tokens) for p in prompts]


def require_chat_template(tokenizer, model: str) -> None:
    """Raise `GenerationError` when `tokenizer` (of `model`) has no chat template to render prompts with."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(f"tokenizer of {model!r} has no chat template; use an instruct/chat model")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, Iterable) else [int(value)]


def template_end_of_turn(tokenizer) -> int | None:
    """The special token the chat template puts right after an assistant message's content, if there is one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe simply adds no id
        return None
    at = text.rfind(_PROBE)
    if at < 0:
        return None
    rest = tokenizer(text[at + len(_PROBE):], add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(
        getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return int(rest[0]) if rest and rest[0] in special else None


def end_of_turn_ids(tokenizer, generation_config=None, extra: Iterable[int] | None = None) -> list[int]:
    """Sorted union of the tokenizer's eos, `generation_config.eos_token_id` (int or list), the chat template's
    end-of-turn token and `extra`."""
    ids = set(_as_list(getattr(tokenizer, "eos_token_id", None)))
    ids |= set(_as_list(getattr(generation_config, "eos_token_id", None)))
    eot = template_end_of_turn(tokenizer)
    if eot is not None:
        ids.add(eot)
    ids |= set(_as_list(extra))
    return sorted(ids)


def make_completion(tokenizer, ids: Iterable[int], stop_ids: Iterable[int], max_new_tokens: int) -> Completion:
    """The completion in `ids` (generated tokens only, possibly padded after a stop): cut after the first stop id
    ("stop"); else "length" when it holds `max_new_tokens` tokens, "stop" when the engine ended it earlier (a stop
    string). Padding is only recognised after a stop id."""
    ids, stops = [int(t) for t in ids], set(stop_ids)
    for i, token in enumerate(ids):
        if token in stops:
            kept = ids[: i + 1]
            return Completion(kept, tokenizer.decode(kept, skip_special_tokens=True), "stop")
    reason = "length" if len(ids) >= max_new_tokens else "stop"
    return Completion(ids, tokenizer.decode(ids, skip_special_tokens=True), reason)
