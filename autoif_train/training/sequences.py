"""Each distinct sequence of a DPO micro-batch forwarded once; its pair losses formed by TRL's own `_compute_loss`.

TRL's DPO forward sends every pair's chosen and rejected sequence through the policy, so a prompt whose m x n pairs
share a micro-batch has each response computed n (or m) times and its prompt 2mn times, and even a lone pair
computes its prompt twice. Here, from TRL's collated pairwise batch (its truncation and padding as they are):
1. `distinct_sequences` finds the distinct (prompt, response) sequences;
2. `sequence_outputs` forwards each once, in one of two ways:
   - whole: the distinct sequences in one batch, as wide as TRL's;
   - shared prompts (`share_prompts`): each distinct prompt (all but its last token) once, keeping its key/value
     cache, then every response after its prompt's cache (expanded with `index_select`, so the backward sums
     what each response sends back into it); only the responses (and the prompt's last token) reach the LM head,
     and prompts and responses are padded each to their own longest;
3. `pair_loss` indexes the per-token outputs back into TRL's pairwise layout and calls `DPOTrainer._compute_loss`
   with a stand-in model that returns them, the reference log-probs coming precomputed in the batch
   (`training.reference`). Every loss type, weight and metric is TRL's code; the gradients equal the pairwise
   computation's, since a sequence's copies send their gradients back through one forward instead of several
   (tests/test_train_sequences.py checks losses and gradients to 1e-5).

`unsupported_reason` names what this does not cover (TRL's pairwise path is used then): MoE auxiliary losses and
prompt-learning PEFT; the config refuses `ld_alpha` and `sync_ref_model`. The policy shares prompts only on one
process without gradient checkpointing (`can_share_prompts`); the reference, without gradient, everywhere. Not
protected against: a model whose cache is not one plain `DynamicLayer` per layer (sliding windows, linear
attention) with `share_prompts` on: it raises and asks for `share_prompts: false`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType, is_peft_model

FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


@dataclass
class Layout:
    """A collated pairwise batch's distinct sequences: `rows[i]` is row i's sequence; each sequence's token ids
    (unpadded) and the index of its first completion token (its length when it has none); TRL's padded width."""

    rows: torch.Tensor
    tokens: list[list[int]]
    starts: list[int]
    width: int


def distinct_sequences(batch: dict) -> Layout:
    """The distinct (tokens, completion start) rows of a batch from TRL's `DataCollatorForPreference`."""
    ids, lengths = batch["input_ids"].tolist(), batch["attention_mask"].sum(dim=1).tolist()
    completion = batch["completion_mask"].tolist()
    index: dict[tuple, int] = {}
    tokens, starts, rows = [], [], []
    for row, n, mask in zip(ids, lengths, completion, strict=True):
        start = next((k for k in range(n) if mask[k]), n)
        key = (start, tuple(row[:n]))
        if key not in index:
            index[key] = len(tokens)
            tokens.append(row[:n])
            starts.append(start)
        rows.append(index[key])
    return Layout(torch.tensor(rows, device=batch["input_ids"].device), tokens, starts, batch["input_ids"].size(1))


def _padded(seqs: list[list[int]], width: int, value: int, device) -> torch.Tensor:
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long, device=device)


def _base_model(model):
    while hasattr(model, "module"):  # DeepSpeed engine, DDP
        model = model.module
    return model.get_base_model() if is_peft_model(model) else model


def _cache_kwarg(model) -> str:
    """The forward's name for the key/value cache: `cache` (transformers 5.24) or `past_key_values` (5.19)."""
    params = inspect.signature(type(_base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def sequence_outputs(model, layout: Layout, pad_id: int, share_prompts: bool) -> dict:
    """Per-token fused-LM-head outputs (`FIELDS`, None where the head computed none) of the distinct sequences,
    `[sequences, width - 1]` as TRL's forward gives them for its rows (zero outside the completions)."""
    device = layout.rows.device
    if share_prompts and min(layout.starts) >= 2:  # every prompt keeps a non-empty part before its last token
        return _shared_prompt_outputs(model, layout, pad_id, device)
    ids = _padded(layout.tokens, layout.width, pad_id, device)
    mask = _padded([[1] * len(t) for t in layout.tokens], layout.width, 0, device)
    labels = _padded([[-100] * s + t[s:] for t, s in zip(layout.tokens, layout.starts, strict=True)],
                     layout.width, -100, device)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    return {name: getattr(out, name, None) for name in FIELDS}


def _shared_prompt_outputs(model, layout: Layout, pad_id: int, device) -> dict:
    from transformers.cache_utils import DynamicLayer

    prefixes: dict[tuple, int] = {}
    of_seq = [prefixes.setdefault(tuple(t[: s - 1]), len(prefixes)) for t, s in zip(layout.tokens, layout.starts,
                                                                                    strict=True)]
    heads = [list(p) for p in prefixes]
    width = max(len(p) for p in heads)
    head_mask = _padded([[1] * len(p) for p in heads], width, 0, device)
    kwarg = _cache_kwarg(model)
    out = model(input_ids=_padded(heads, width, pad_id, device), attention_mask=head_mask, use_cache=True,
                logits_to_keep=1)
    cache = getattr(out, "cache", None)
    cache = getattr(out, "past_key_values", None) if cache is None else cache
    if cache is None or any(type(layer) is not DynamicLayer for layer in getattr(cache, "layers", [None])):
        raise ValueError(f"share_prompts needs a cache of plain DynamicLayer layers; this model's is "
                         f"{type(cache).__name__}: set share_prompts: false")
    of_seq_t = torch.tensor(of_seq, device=device)
    cache.reorder_cache(of_seq_t)  # one copy of its prompt's keys/values per sequence (index_select)
    tails = [t[s - 1 :] for t, s in zip(layout.tokens, layout.starts, strict=True)]
    tail_width = max(len(t) for t in tails)
    tail_mask = _padded([[1] * len(t) for t in tails], tail_width, 0, device)
    labels = _padded([[-100] + t[1:] for t in tails], tail_width, -100, device)
    offsets = torch.tensor([s - 1 for s in layout.starts], device=device)
    positions = offsets[:, None] + torch.arange(tail_width, device=device)[None, :]
    out = model(input_ids=_padded(tails, tail_width, pad_id, device),
                attention_mask=torch.cat([head_mask.index_select(0, of_seq_t), tail_mask], dim=1),
                position_ids=positions, labels=labels, fused_lm_head=True, **{kwarg: cache})
    if cache.get_seq_length() != width + tail_width:  # the forward ignored the cache: the responses saw no prompt
        raise RuntimeError(f"share_prompts: the model's forward did not use the prompt cache passed as `{kwarg}`; "
                           "set share_prompts: false")
    # tail position j predicts token start + j, which TRL's shifted layout holds at start - 1 + j
    rows = torch.tensor([u for u, t in enumerate(tails) for _ in range(len(t) - 1)], device=device)
    cols = torch.tensor([j for t in tails for j in range(len(t) - 1)], device=device)
    fields = {}
    for name in FIELDS:
        tail = getattr(out, name, None)
        if tail is not None:
            full = tail.new_zeros((len(tails), layout.width - 1))
            full[rows, cols + offsets[rows]] = tail[rows, cols]
            tail = full
        fields[name] = tail
    return fields


class _PairwiseOutputs:
    """Stands in for the model inside TRL's `_compute_loss`: returns the distinct sequences' outputs, one row per
    pairwise row (`index_select`, so the backward sums the copies' gradients into their one forward)."""

    def __init__(self, fields: dict, rows: torch.Tensor):
        from trl.trainer.utils import FusedCausalLMOutput

        self.output = FusedCausalLMOutput(**{k: None if v is None else v.index_select(0, rows)
                                             for k, v in fields.items()})

    def __call__(self, *args, **kwargs):
        return self.output


def pair_loss(trainer, model, inputs: dict) -> torch.Tensor:
    """TRL's DPO loss (and metrics) of a collated pairwise batch carrying `ref_chosen_logps`/`ref_rejected_logps`,
    with each distinct sequence forwarded once."""
    from trl import DPOTrainer

    layout = distinct_sequences(inputs)
    fields = sequence_outputs(model, layout, trainer.data_collator.pad_token_id, trainer.share_prompts)
    return DPOTrainer._compute_loss(trainer, _PairwiseOutputs(fields, layout.rows), inputs, False)


def unsupported_reason(trainer) -> str | None:
    """Why this trainer's setup needs TRL's pairwise path, or None."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if getattr(trainer, "aux_loss_enabled", False):
        return "the model's MoE auxiliary loss is computed per forward"
    if is_peft_model(model) and getattr(model, "active_peft_config", None) is not None \
            and model.active_peft_config.is_prompt_learning:
        return "prompt-learning PEFT prepends virtual tokens to every forward"
    return None


def can_share_prompts(trainer) -> bool:
    """Shared prompts for the policy: no gradient checkpointing (its replay drops the cache) and one process (the
    prompt and response forwards come before one backward, which ZeRO-3 does not support: its backward finds the
    prompt forward's parameters released; DDP and FSDP expect one forward per backward too)."""
    return (bool(trainer.args.share_prompts) and not trainer.args.gradient_checkpointing
            and trainer.accelerator.distributed_type == DistributedType.NO)
