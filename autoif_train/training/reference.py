"""Reference log-probs of a round's distinct sequences: computed once, right after the round's pairs are planned, and
stored with the round (`rounds/round_XXXX/reference.jsonl`), so its DPO steps run no reference forward.

The reference is frozen (TRL's `ref_model`, or the policy with its adapter off under PEFT; the config refuses
`sync_ref_model` with `dedupe_sequences`), so the summed completion log-prob of a (prompt, sample) sequence never
changes: a 2 x 2 prompt needs 4 reference forwards, not TRL's 8, and a resumed round none. The sequences are
sorted by prompt and length, split in equal shares over the ranks (every rank runs the same number of forwards,
as ZeRO-3 needs), forwarded without gradient in batches of 2 x `precompute_ref_batch_size` (default
`per_device_train_batch_size`) sequences, each prompt once with `share_prompts` (`training.sequences`), and
gathered. TRL's collator truncates them, as it does the training batches. A stored file is reused when it covers
every sequence of the round's pairs with the completion token counts this run's `max_length` and
`truncation_mode` give; otherwise it is recomputed. Not protected against: a different reference model under the
same `output_dir` (like the rest of the round state).
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import broadcast_object_list, gather_object, is_peft_model

from autoif_train.training.rollouts import equal_shares
from autoif_train.training.sequences import distinct_sequences, sequence_outputs


def round_sequences(pairs: list[dict], prompt_ids: dict[str, list[int]]) -> list[tuple]:
    """The distinct sequences of a round's pairs, in first-seen order: `((prompt_index, sample_index), prompt_id,
    prompt ids, completion ids)`."""
    seen, out = set(), []
    for p in pairs:
        for side in ("chosen", "rejected"):
            key = (p["prompt_index"], p[f"{side}_sample"])
            if key not in seen:
                seen.add(key)
                out.append((key, p["prompt_id"], prompt_ids[p["prompt_id"]], p[f"{side}_ids"]))
    return out


def _examples(seqs: list[tuple]) -> list[dict]:
    """A sequence as a TRL preference example whose chosen and rejected are the same (counted once)."""
    return [{"prompt_ids": s[2], "chosen_ids": s[3], "rejected_ids": s[3]} for s in seqs]


def scored_tokens(collator, seqs: list[tuple], chunk: int = 256) -> list[int]:
    """Completion tokens of each sequence after TRL's collator truncates it (what its log-prob sums over)."""
    counts = []
    for start in range(0, len(seqs), chunk):
        part = seqs[start : start + chunk]
        counts += collator(_examples(part))["completion_mask"][: len(part)].sum(dim=1).tolist()
    return counts


def round_reference(trainer, r: int, pairs: list[dict], prompt_ids: dict[str, list[int]]) -> tuple[dict, bool]:
    """Collective: `{(prompt_index, sample_index): reference log-prob}` for every sequence of round `r`'s pairs, and
    whether it was read from the round's folder (else computed now and written there)."""
    acc = trainer.accelerator
    seqs = round_sequences(pairs, prompt_ids)
    tokens = scored_tokens(trainer.data_collator, seqs)
    saved = None
    if acc.is_main_process:
        rows = trainer.store.load_reference(r)
        if rows is not None:
            by_key = {(row["prompt_index"], row["sample_index"]): row for row in rows}
            if all(s[0] in by_key and by_key[s[0]]["tokens"] == n for s, n in zip(seqs, tokens, strict=True)):
                saved = {s[0]: by_key[s[0]]["logp"] for s in seqs}
    saved = broadcast_object_list([saved])[0]
    if saved is not None:
        return saved, True
    logps = reference_log_probs(trainer, seqs)
    if acc.is_main_process:
        trainer.store.save_reference(r, [
            {"prompt_index": s[0][0], "prompt_id": s[1], "sample_index": s[0][1], "tokens": n, "logp": lp}
            for s, n, lp in zip(seqs, tokens, logps, strict=True)])
    return {s[0]: lp for s, lp in zip(seqs, logps, strict=True)}, False


@contextlib.contextmanager
def reference_model(trainer):
    """The frozen reference, as TRL's `compute_ref_log_probs` picks it: `ref_model`, else the policy with its adapter
    off (or its "ref" adapter); no gradient, no checkpointing, the accelerator's autocast."""
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    model, adapter = trainer.ref_model, contextlib.nullcontext()
    if model is None:
        model = trainer.model
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if is_peft_model(unwrapped):
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
    with (torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs),
          adapter, trainer.accelerator.autocast()):
        yield model


def reference_log_probs(trainer, seqs: list[tuple]) -> list[float]:
    """Collective: the reference's summed completion log-prob of each sequence, every rank an equal share."""
    acc, args = trainer.accelerator, trainer.args
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][2]), seqs[i][2], len(seqs[i][3])))
    share = [order[i] for i in equal_shares(len(order), acc.num_processes)[acc.process_index]] if order else []
    size = 2 * (args.precompute_ref_batch_size or args.per_device_train_batch_size)
    mine = []
    with reference_model(trainer) as model:
        for start in range(0, len(share), size):
            chunk = share[start : start + size]
            batch = {k: v.to(acc.device) for k, v in trainer.data_collator(_examples([seqs[i] for i in chunk])).items()}
            layout = distinct_sequences(batch)
            fields = sequence_outputs(model, layout, trainer.data_collator.pad_token_id, bool(args.share_prompts))
            sums = fields["log_probs"].sum(dim=1).index_select(0, layout.rows[: len(chunk)])
            mine += list(zip(chunk, sums.float().tolist(), strict=True))
    logps = [0.0] * len(seqs)
    for i, value in gather_object(mine):
        logps[i] = value
    return logps
