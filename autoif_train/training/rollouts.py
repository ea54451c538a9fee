"""One online-DPO rollout: every rank samples an equal share of a round's prompts, the main process gets one
record per sample, every rank scores an equal share of the samples with the recipe's rewards (`autoif_train.rewards`,
verifier code in each rank's sandboxed pool; `reward_scoring: main` scores on the main process only), and the main
process sums up the round.

Equal shares: rank r samples prompts [r * per, (r + 1) * per) with per = ceil(n / world); the last shares are
padded with copies of the last prompt and the padding is dropped after the gather. Every rank therefore passes
the same number of prompts, which TRL's vLLM server mode and tensor-parallel colocate slicing
(`rank * len(prompts)`) assume, and every record carries its prompt index, checked after the gather.

A sample record: `prompt_index`, `prompt_id`, `sample_index`, `text`, `completion_ids`, `finish_reason`
("stop" / "length") and `num_tokens`. A score record adds `results` (one per check: True / False / None) and
`pass_rate` (None when no check returned a bool: the sample is unscored and joins no pair).

`RolloutMixin` is the trainer's half that produces a round: chunks of prompts sampled (seeded per round, chunk and
rank on a forked RNG, so a resumed round samples what the uninterrupted run did), scored, written durably, then
planned (pairs, step budget). Not protected against: vLLM sampling is seeded by its engine, not per chunk, so a
resumed vLLM round re-samples an unfinished chunk differently.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from accelerate.utils import broadcast_object_list, gather_object

from autoif_train.data.pairs import build_round_pairs
from autoif_train.data.rows import PromptRow
from autoif_train.generation.chat import encode_prompt
from autoif_train.training.rounds import RoundStateError
from autoif_train.training.schedule import round_steps

logger = logging.getLogger(__name__)


def equal_shares(n: int, world: int) -> list[list[int]]:
    """For each rank, `ceil(n / world)` prompt indices; past the end they repeat the last index (padding)."""
    per = max(1, math.ceil(n / world))
    return [[min(i, n - 1) for i in range(r * per, (r + 1) * per)] for r in range(world)]


def sample_prompts(accelerator, sampler, prompt_ids: list[list[int]], row_ids: list[str],
                   num_samples: int, offset: int = 0) -> list[dict] | None:
    """Sample `num_samples` completions for every prompt across all ranks (collective: every rank calls it with the
    same arguments). The main process gets the sample records in prompt order (`prompt_index` = offset + position);
    other ranks get None."""
    n = len(prompt_ids)
    shares = equal_shares(n, accelerator.num_processes)
    rank = accelerator.process_index
    mine = shares[rank]
    real = [i for k, i in enumerate(mine) if rank * len(mine) + k < n]  # indices this rank really owns
    outs = sampler.sample([prompt_ids[i] for i in mine], num_samples)
    if len(outs) != len(mine):
        raise RuntimeError(f"rank {rank}: the sampler returned {len(outs)} prompts' samples for {len(mine)}")
    records = []
    for i, completions in zip(real, outs[: len(real)], strict=True):
        for k, c in enumerate(completions):
            records.append({"prompt_index": offset + i, "prompt_id": row_ids[i], "sample_index": k, **c.to_dict()})
    gathered = gather_object(records)
    if not accelerator.is_main_process:
        return None
    gathered.sort(key=lambda rec: (rec["prompt_index"], rec["sample_index"]))
    expected = [(offset + i, k) for i in range(n) for k in range(num_samples)]
    got = [(rec["prompt_index"], rec["sample_index"]) for rec in gathered]
    if got != expected:
        raise RuntimeError(f"sampling returned records for {len(got)} (prompt, sample) slots, expected {len(expected)}")
    return gathered


def score_records(scores, samples: list[dict]) -> list[dict]:
    """One score record per sample record, from the `Scores` of their texts (in the same order)."""
    return [{"prompt_index": s["prompt_index"], "prompt_id": s["prompt_id"], "sample_index": s["sample_index"],
             "results": results, "pass_rate": rate}
            for s, results, rate in zip(samples, scores.results, scores.pass_rates, strict=True)]


def rollout_metrics(samples: list[dict], scores: list[dict]) -> dict:
    """Per-round sample statistics: mean completion tokens, clipped ratio (share cut at max_new_tokens), share
    ended by an end-of-turn id, unscored share, and the mean pass rate over scored samples."""
    n = len(samples) or 1
    clipped = sum(s["finish_reason"] == "length" for s in samples)
    unscored = sum(sc["pass_rate"] is None for sc in scores)
    rates = [sc["pass_rate"] for sc in scores if sc["pass_rate"] is not None]
    return {
        "samples": len(samples),
        "mean_completion_tokens": sum(s["num_tokens"] for s in samples) / n,
        "clipped_ratio": clipped / n,
        "eos_share": (len(samples) - clipped) / n,
        "truncated_samples": clipped,
        "unscored_samples": unscored,
        "unscored_share": unscored / n,
        "mean_pass_rate": sum(rates) / len(rates) if rates else 0.0,
    }


class RolloutMixin:
    """The online-DPO trainer's rollout half: produce a round's samples, scores and pairs chunk by chunk (durable),
    and plan its step budget. Expects the trainer's `args`, `accelerator`, `store`, `sampler`, `rule`, `prompts`."""

    def _prepare_round(self, r: int, first_prompt: int) -> tuple[list[dict], dict]:
        """Round `r`'s pairs and plan: loaded when already planned, else produced chunk by chunk and written."""
        acc = self.accelerator
        saved = self.store.load_plan(r) if acc.is_main_process else None
        saved = broadcast_object_list([saved])[0]
        if saved is not None:
            if saved[1]["prompt_start"] != first_prompt:
                raise RoundStateError(f"{self.store.round_dir(r)}/plan.json starts at prompt {saved[1]['prompt_start']}"
                                      f" but this run's round {r} starts at {first_prompt}: use a new output_dir")
            return saved[0], dict(saved[1], reused_pairs=True)
        args, k = self.args, self.args.num_samples
        size = args.rollout_chunk_prompts or args.prompts_per_round
        end = len(self.prompts) if args.pairs_per_round else min(len(self.prompts), first_prompt + args.prompts_per_round)
        samples, scores, chunk, reused, timing = [], [], 0, False, {"samples": 0.0, "scores": 0.0}
        start = first_prompt
        overlength = 0
        while start < end:
            chunk_rows = self.prompts[start : min(end, start + size)]
            rows = [row for row in chunk_rows if self._fits(row)]  # the same answer on every rank
            overlength += len(chunk_rows) - len(rows)
            if not rows:
                start += len(chunk_rows)
                chunk += 1
                continue
            ids = [row.id for row in rows]
            done = None
            if acc.is_main_process:
                done = {kind: self.store.load_chunk(r, chunk, kind, ids, k) for kind in ("samples", "scores")}
            done = broadcast_object_list([done])[0]
            chunk_samples, chunk_scores = done["samples"], done["scores"]
            reused = reused or chunk_samples is not None
            if chunk_samples is None:  # every rank samples an equal share of the chunk
                t0 = time.time()
                chunk_samples = self._sample_all(rows, k, offset=start - first_prompt, salt=r + 1)
                if acc.is_main_process:
                    self.store.save_chunk(r, chunk, "samples", chunk_samples, time.time() - t0)
            if chunk_scores is None:  # every rank scores an equal share of the chunk's samples
                t0 = time.time()
                chunk_scores = self._score(rows, chunk_samples, offset=start - first_prompt)
                if acc.is_main_process:
                    self.store.save_chunk(r, chunk, "scores", chunk_scores, time.time() - t0)
            if acc.is_main_process:
                for kind in timing:
                    timing[kind] += self.store.chunk_seconds(r, chunk, kind)
                samples += chunk_samples
                scores += chunk_scores
            start += len(chunk_rows)
            chunk += 1
            if args.pairs_per_round and broadcast_object_list([self._enough_pairs(r, samples, scores)])[0]:
                break
        if overlength:
            logger.warning("round %d: %d prompt(s) skipped: too long for the sampler's context (%s positions) with "
                           "max_new_tokens=%d, or for max_length=%s", r, overlength, self.sampler_context,
                           args.max_new_tokens, args.max_length)
        result = None
        if acc.is_main_process:
            result = self._plan(r, first_prompt, start, samples, scores, timing, reused, overlength)
        pairs, plan = broadcast_object_list([result])[0]
        return pairs, dict(plan, reused_pairs=False)

    def _enough_pairs(self, r: int, samples: list[dict], scores: list[dict]) -> bool:
        """Main process (others get its answer by broadcast): do the chunks so far give `pairs_per_round` pairs?"""
        if not self.accelerator.is_main_process:
            return False
        pairs, _ = build_round_pairs(samples, [sc["pass_rate"] for sc in scores], self.rule, seed=self.args.seed + r)
        return len(self._trainable(pairs)) >= self.args.pairs_per_round

    def _plan(self, r: int, first_prompt: int, end_prompt: int, samples, scores, timing, reused,
              overlength: int = 0) -> tuple[list, dict]:
        """Main process: the round's pairs (cut at `pairs_per_round`), its step budget and counts; written to disk."""
        args, rows = self.args, self.prompts[first_prompt:end_prompt]
        pairs, stats = build_round_pairs(samples, [sc["pass_rate"] for sc in scores], self.rule, seed=args.seed + r,
                                         num_prompts=len(rows))
        pairs = self._trainable(pairs)
        if args.pairs_per_round:
            if len(pairs) < args.pairs_per_round:
                logger.warning("round %d: the prompts ran out with %d of pairs_per_round=%d pairs; the schedule "
                               "assumed %d steps for this round", r, len(pairs), args.pairs_per_round,
                               self.round_budget)
            pairs = pairs[: args.pairs_per_round]
        plan = {
            "round": r, "prompt_start": first_prompt, "prompt_end": end_prompt, "prompts": stats.prompts,
            "prompts_with_pair": stats.prompts_with_pair, "skipped_prompts": stats.skipped,
            "overlength_prompts": overlength,
            "pair_share": stats.pair_share, "pairs": len(pairs), **rollout_metrics(samples, scores),
            "start_step": self.state.global_step,
            "steps": round_steps(len(pairs), args.epochs_per_round, self.per_step),
            "generation_seconds": timing["samples"], "scoring_seconds": timing["scores"],
            "weight_sync_seconds": self._sync_seconds, "reused_samples": reused,
        }
        self.store.save_plan(r, samples, scores, pairs, plan)
        return pairs, plan

    def _reward(self):
        """The recipe's rewards (`rewards`, `reward_weights`); verifier code runs in this rank's own sandbox pool."""
        if self._rewards is None:
            self._rewards = self.args.recipe_reward()
        return self._rewards

    @property
    def sampler_context(self) -> int | None:
        """Prompt + completion positions the sampler holds (vLLM's max_model_len, the model's positions)."""
        return getattr(self.sampler, "max_model_len", None)

    def _fits(self, row: PromptRow) -> bool:
        """Can `row` be sampled (prompt + max_new_tokens within the sampler's context) and trained (a prompt shorter
        than `max_length` under keep_start truncation)? Over-length prompts are skipped and counted per round."""
        n = len(self._encoded(row))
        context = self.sampler_context
        if context is not None and n + self.args.max_new_tokens > context:
            return False
        return not (self.args.max_length is not None and self.args.truncation_mode == "keep_start"
                    and n >= self.args.max_length)

    def _trainable(self, pairs: list[dict]) -> list[dict]:
        """Pairs whose prompt leaves room for a completion under `max_length` (TRL drops the others too)."""
        if self.args.max_length is None or self.args.truncation_mode != "keep_start":
            return pairs
        by_id = {row.id: row for row in self.prompts}
        return [p for p in pairs if len(self._encoded(by_id[p["prompt_id"]])) < self.args.max_length]

    def _encoded(self, row: PromptRow) -> list[int]:
        """Prompt token ids (the one chat encoder), shared by sampling and training."""
        if row.id not in self._prompt_ids:
            self._prompt_ids[row.id] = encode_prompt(self.processing_class, row.messages)
        return self._prompt_ids[row.id]

    def _sample_all(self, rows: list[PromptRow], num_samples: int, offset: int = 0, salt: int = 0) -> list[dict] | None:
        """Every rank samples an equal share of `rows`; the main process gets every sample record in prompt order
        (`prompt_index` counted from `offset`)."""
        if self._weights_dirty:
            t0 = time.time()
            self.sampler.sync_weights()
            self._weights_dirty = False
            self._sync_seconds = time.time() - t0
        # seeded per (round, chunk, rank) on a forked RNG: a resumed round samples what the uninterrupted run did,
        # and sampling never moves the training RNG (transformers sampling; vLLM seeds its own engine)
        seed = (self.args.seed * 1_000_003 + salt * 104_729 + offset * 7919 + self.accelerator.process_index) % 2**31
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            return sample_prompts(self.accelerator, self.sampler, [self._encoded(row) for row in rows],
                                  [row.id for row in rows], num_samples, offset=offset)

    def _rng_devices(self) -> list:
        return [self.accelerator.device] if self.accelerator.device.type == "cuda" else []

    def _score(self, rows: list[PromptRow], samples: list[dict] | None, offset: int = 0) -> list[dict] | None:
        """Collective: each sample's check results and pass rate (None when unscored), every rank scoring an equal
        share (`rewards.spread`). `samples` is read on the main process only; it gets the score records."""
        from autoif_train.rewards.spread import score_spread

        acc = self.accelerator
        keys = [(s["prompt_index"], s["text"]) for s in samples] if acc.is_main_process else None
        keys = broadcast_object_list([keys])[0]
        by_index = {offset + i: row for i, row in enumerate(rows)}
        scores = score_spread(self._reward(), [by_index[p] for p, _ in keys], [text for _, text in keys], acc,
                              mode=self.args.reward_scoring)
        return score_records(scores, samples) if acc.is_main_process else None

    def _heldout_pass_rate(self, r: int) -> float:
        """Mean verifier pass rate of one sample per held-out prompt (seeded, RNG forked: training is unchanged).
        An unscored held-out sample counts as 0."""
        kept = [row for row in self.eval_prompts if self._fits(row)]
        if len(kept) < len(self.eval_prompts):
            logger.warning("held-out: %d over-length prompt(s) skipped", len(self.eval_prompts) - len(kept))
        if not kept:
            return 0.0
        samples = self._sample_all(kept, 1, salt=-(r + 1))
        rate = None
        scores = self._score(kept, samples)  # collective: every rank scores a share
        if self.accelerator.is_main_process:
            rows = [{"prompt_id": s["prompt_id"], "response": s["text"], "finish_reason": s["finish_reason"],
                     "pass_rate": sc["pass_rate"]} for s, sc in zip(samples, scores, strict=True)]
            self.store.save_heldout(r, rows)
            rate = sum(row["pass_rate"] or 0.0 for row in rows) / len(rows)
        return broadcast_object_list([rate])[0]

