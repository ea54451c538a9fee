"""AutoIF iterative online DPO on top of TRL's DPOTrainer: one `train()` call that spans all rounds.

Per round: take the next `prompts_per_round` prompts (in file order), sample `num_samples` responses each from the
current policy, score every response with its prompt's verifiers in the sandboxed `VerifierPool` (main process
only), build pairs with the AutoIF rule (`autoif_train.pairs`), write samples / scores / pairs to
`output_dir/rounds/round_XXXX/`, then run DPO steps on the pairs with DPOTrainer's own loss and frozen reference
model. The round's last optimizer step triggers a full Trainer checkpoint (model, optimizer, scheduler, RNG) and the
round is then marked complete; rerunning the same command resumes from that checkpoint at the next round and reuses
any samples or pairs already written for it.

How rounds fit the HF Trainer: the train "dataloader" is an iterator that produces each round's batches lazily
(sampling happens inside it, on every rank, after the previous round's steps), so DeepSpeed's engine, the optimizer
and the LR schedule are created once. `max_steps` is set to an upper bound (every prompt yielding
`max_chosen * max_rejected` pairs) because the real number of pairs is only known round by round; with a decaying
schedule the learning rate therefore ends above its final value when fewer pairs come out. Assumes `output_dir`
is on a filesystem every rank sees.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import SaveStrategy
from trl import DPOTrainer

from autoif_train.pairs import PairRule, build_round_pairs
from autoif_train.prompt_data import PromptRow
from autoif_train.rounds import RoundStateError, RoundStore
from autoif_train.sampling import build_sampler

logger = logging.getLogger(__name__)

ROUND_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def planned_rounds(num_prompts: int, prompts_per_round: int, num_rounds: int) -> int:
    """Rounds that will run: `num_rounds`, or fewer when the prompts run out."""
    return min(num_rounds, math.ceil(num_prompts / prompts_per_round))


def max_optimizer_steps(num_prompts: int, args, world_size: int) -> int:
    """Upper bound on optimizer steps over all rounds (the LR schedule's length)."""
    per_step = world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps
    total = 0
    for r in range(planned_rounds(num_prompts, args.prompts_per_round, args.num_rounds)):
        n = min(args.prompts_per_round, num_prompts - r * args.prompts_per_round)
        total += max(1, math.ceil(n * args.max_chosen * args.max_rejected * args.epochs_per_round / per_step))
    return max(total, 1)


class _RoundBatches:
    """Stands in for the train dataloader: iterating it runs the remaining rounds and yields their batches."""

    def __init__(self, trainer: AutoIFOnlineDPOTrainer):
        self.trainer = trainer

    def __iter__(self):
        return self.trainer._iterate_rounds()


class _RoundCallback(TrainerCallback):
    """Saves and logs at the last optimizer step of each round, then marks the round complete."""

    def __init__(self, trainer: AutoIFOnlineDPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        cur = self.trainer._current
        if cur is not None and state.global_step >= cur["end_step"]:
            control.should_save = True
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        cur = self.trainer._current
        if cur is not None and logs and not any(k.startswith("round/") for k in logs):
            cur["logs"].append(dict(logs))

    def on_save(self, args, state, control, **kwargs):
        cur = self.trainer._current
        if cur is not None and state.global_step >= cur["end_step"]:
            self.trainer._finish_round(cur, checkpoint=f"checkpoint-{state.global_step}")
        return control


@dataclass
class OnlineDPOResult:
    """What a run produced: the final model folder and one record per complete round (as in rounds.jsonl)."""

    output_dir: str
    rounds: list[dict] = field(default_factory=list)


class AutoIFOnlineDPOTrainer(DPOTrainer):
    """DPOTrainer whose training data is produced round by round from the policy's own verified samples.

    Verifier code runs only in the sandbox pool's worker processes, never in this process.
    """

    def __init__(self, model, args, prompts: list[PromptRow], processing_class=None, peft_config=None, ref_model=None,
                 eval_prompts: list[PromptRow] | None = None):
        if not prompts:
            raise ValueError("online DPO needs at least one prompt row")
        if args.precompute_ref_log_probs:
            raise ValueError("precompute_ref_log_probs does not apply to online DPO: each round's pairs are new")
        self.prompts = prompts
        self.eval_prompts = eval_prompts or []
        self.num_planned_rounds = planned_rounds(len(prompts), args.prompts_per_round, args.num_rounds)
        # Rounds decide when to checkpoint; the data is new each round, so there is nothing to skip on resume.
        args.save_strategy = SaveStrategy.NO
        args.ignore_data_skip = True
        # Old checkpoints are deleted only after the next round is marked complete (HF would delete them first).
        self.keep_checkpoints, args.save_total_limit = args.save_total_limit, None
        # DPOTrainer needs a dataset at construction (format detection, collator); rounds replace it.
        first = prompts[0].messages
        placeholder = Dataset.from_list([{
            "prompt": first, "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }])
        super().__init__(
            model=model, ref_model=ref_model, args=args, train_dataset=placeholder,
            processing_class=processing_class, peft_config=peft_config,
        )
        args.max_steps = max_optimizer_steps(len(prompts), args, self.accelerator.num_processes)  # read by train()
        self.add_callback(_RoundCallback(self))
        self.store = RoundStore(args.output_dir)
        self.rule = PairRule(args.chosen_threshold, args.rejected_threshold, args.max_chosen, args.max_rejected)
        self.sampler = build_sampler(self, args)
        self.start_round = 0
        self._current: dict | None = None
        self._pool = None
        self._weights_dirty = True  # the sampler has not seen the current weights yet

    # ----- rounds --------------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        return _RoundBatches(self)

    def _iterate_rounds(self):
        for r in range(self.start_round, self.num_planned_rounds):
            pairs, summary = self._prepare_round(r)
            batches, n_steps = self._round_batches(r, pairs)
            if not batches:
                self._finish_empty_round(r, summary)
                continue
            self._current = {
                "round": r, "summary": summary, "logs": [], "train_start": time.time(), "steps": n_steps,
                "end_step": self.state.global_step + n_steps,
            }
            self._weights_dirty = True
            yield from batches
        self.control.should_training_stop = True

    def _round_prompts(self, r: int) -> list[PromptRow]:
        p = self.args.prompts_per_round
        return self.prompts[r * p : (r + 1) * p]

    def _verifier_pool(self):
        if self._pool is None:
            from autoif_train.sandbox import VerifierPool

            args = self.args
            self._pool = VerifierPool(workers=args.verifier_workers, timeout=args.verifier_timeout,
                                      isolation=args.isolation)
            self._pool.__enter__()
        return self._pool

    def close(self) -> None:
        """Stop the verifier pool (main process only holds one) and the sampler's engine, if it has one."""
        if self._pool is not None:
            self._pool.__exit__(None, None, None)
            self._pool = None
        if hasattr(self.sampler, "close"):
            self.sampler.close()

    def _prepare_round(self, r: int) -> tuple[list[dict], dict]:
        """Samples, scores and pairs for round `r`: from disk when already written, else produced and written."""
        acc, store = self.accelerator, self.store
        rows = self._round_prompts(r)
        ids = [row.id for row in rows]
        status = None
        if acc.is_main_process:
            if store.load_pairs(r) is not None:
                status = "pairs"
            elif store.load_samples(r, ids) is not None:
                status = "samples"
        status = broadcast_object_list([status])[0]

        if status is None:  # every rank samples its share of the prompts
            t0 = time.time()
            responses = self._sample_all(rows, self.args.num_samples)
            if acc.is_main_process:
                store.save_samples(r, ids, responses, seconds=time.time() - t0)

        result = None
        if acc.is_main_process:
            loaded = store.load_pairs(r)
            result = loaded if loaded is not None else self._score_and_pair(r, rows, ids, reused=status == "samples")
        pairs, summary = broadcast_object_list([result])[0]
        return pairs, dict(summary, reused_pairs=status == "pairs")

    def _sample_all(self, rows: list[PromptRow], num_samples: int) -> list[list[str]] | None:
        """Every rank samples its share of `rows`; the main process gets all responses in row order (others None)."""
        acc = self.accelerator
        if self._weights_dirty:
            self.sampler.sync_weights()
            self._weights_dirty = False
        mine = list(range(acc.process_index, len(rows), acc.num_processes))
        outs = self.sampler.sample([rows[i].messages for i in mine], num_samples)
        gathered = gather_object(list(zip(mine, outs, strict=True)))
        return [resp for _, resp in sorted(gathered, key=lambda t: t[0])] if acc.is_main_process else None

    def _score(self, rows: list[PromptRow], responses: list[list[str]], progress: bool = True):
        """Main process only: each response's verifier results and pass rate, per prompt."""
        from autoif_train.sandbox import pass_rate

        calls = [(code, resp) for row, resps in zip(rows, responses) for resp in resps for code in row.verifiers]
        flat = self._verifier_pool().run(calls, progress=progress)
        results, pass_rates, k = [], [], 0
        for row, resps in zip(rows, responses):
            per_prompt = []
            for _ in resps:
                per_prompt.append(flat[k : k + len(row.verifiers)])
                k += len(row.verifiers)
            results.append(per_prompt)
            pass_rates.append([pass_rate(res) for res in per_prompt])
        return results, pass_rates

    def _heldout_pass_rate(self, r: int) -> float:
        """Mean verifier pass rate of one sample per held-out prompt (RNG forked: training randomness is unchanged)."""
        with torch.random.fork_rng():
            responses = self._sample_all(self.eval_prompts, 1)
        rate = None
        if self.accelerator.is_main_process:
            _, pass_rates = self._score(self.eval_prompts, responses, progress=False)
            rows = [{"prompt_id": row.id, "response": resp[0], "pass_rate": rates[0]}
                    for row, resp, rates in zip(self.eval_prompts, responses, pass_rates)]
            self.store.save_heldout(r, rows)
            rate = sum(row["pass_rate"] for row in rows) / len(rows)
        return broadcast_object_list([rate])[0]

    def _score_and_pair(self, r: int, rows: list[PromptRow], ids: list[str], reused: bool) -> tuple[list, dict]:
        store = self.store
        responses = store.load_samples(r, ids)
        pass_rates = store.load_scores(r, ids)
        if pass_rates is None:
            t0 = time.time()
            results, pass_rates = self._score(rows, responses)
            store.save_scores(r, ids, results, pass_rates, seconds=time.time() - t0)
        pairs, stats = build_round_pairs(ids, responses, pass_rates, self.rule, seed=self.args.seed + r)
        all_rates = [x for rates in pass_rates for x in rates]
        summary = {
            "round": r, "prompts": stats.prompts, "prompts_with_pair": stats.prompts_with_pair,
            "skipped_prompts": stats.skipped, "pair_share": stats.pair_share, "pairs": stats.pairs,
            "mean_pass_rate": sum(all_rates) / len(all_rates) if all_rates else 0.0,
            "generation_seconds": store.timing(r, "samples.json", "generation_seconds"),
            "scoring_seconds": store.timing(r, "scores.json", "scoring_seconds"),
            "reused_samples": reused,
        }
        store.save_pairs(r, pairs, summary)
        return pairs, summary

    def _round_batches(self, r: int, pairs: list[dict]) -> tuple[list[dict], int]:
        """This rank's collated micro-batches for round `r` (a whole number of optimizer steps on every rank)."""
        if not pairs:
            return [], 0
        by_id = {row.id: row for row in self._round_prompts(r)}
        unknown = {p["prompt_id"] for p in pairs} - by_id.keys()
        if unknown:
            raise RoundStateError(f"{self.store.round_dir(r)}/pairs.jsonl names prompts {sorted(unknown)[:3]} that are "
                                  f"not in this run's round {r}: the dataset changed; use a new output_dir")
        rows = [{
            "prompt": by_id[p["prompt_id"]].messages,
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        } for p in pairs]
        ds = self._prepare_dataset(Dataset.from_list(rows), self.processing_class, self.args, f"round {r}")
        examples = [{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for ex in ds]
        if not examples:
            return [], 0
        args, world, rank = self.args, self.accelerator.num_processes, self.accelerator.process_index
        bs, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
        per_step = world * bs * ga
        n_steps = max(1, math.ceil(len(examples) * args.epochs_per_round / per_step))
        rng, order = random.Random(args.seed * 7919 + r), []
        while len(order) < n_steps * per_step:  # whole shuffled passes, cut at a whole number of steps
            perm = list(range(len(examples)))
            rng.shuffle(perm)
            order += perm
        batches = []
        for g in range(n_steps * ga):
            start = (g * world + rank) * bs
            batches.append(self.data_collator([examples[i] for i in order[start : start + bs]]))
        return batches, n_steps

    def _round_record(self, cur_summary: dict, logs: list[dict], checkpoint, steps: int, seconds: float) -> dict:
        record = dict(cur_summary)
        for key in ROUND_METRICS:
            values = [log[key] for log in logs if key in log]
            name = "dpo_loss" if key == "loss" else key.replace("/", "_")
            record[name] = sum(values) / len(values) if values else None
        record.update(checkpoint=checkpoint, global_step=self.state.global_step, train_steps=steps,
                      training_seconds=seconds)
        return record

    def _finish_round(self, cur: dict, checkpoint: str) -> None:
        record = self._round_record(cur["summary"], cur["logs"], checkpoint, cur["steps"],
                                    time.time() - cur["train_start"])
        self._current = None
        if self.args.eval_every_round and self.eval_prompts:
            record["heldout_pass_rate"] = self._heldout_pass_rate(cur["round"])
        self.accelerator.wait_for_everyone()  # every rank's checkpoint shard is on disk
        if self.accelerator.is_main_process:
            self.store.mark_complete(cur["round"], record)
            self._rotate_checkpoints()
        self._report(record)

    def _rotate_checkpoints(self) -> None:
        """Keep the newest `save_total_limit` round checkpoints (all when unset)."""
        if not self.keep_checkpoints:
            return
        folders = [p for p in self.store.output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        folders.sort(key=lambda p: int(p.name.split("-")[-1]))
        for old in folders[: -self.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _finish_empty_round(self, r: int, summary: dict) -> None:
        logger.warning(
            "round %d: no prompt gave both a response with pass rate >= %s and one <= %s (%d prompts, mean pass "
            "rate %.3f); nothing to train on, round logged and skipped", r, self.rule.chosen_threshold,
            self.rule.rejected_threshold, summary["prompts"], summary["mean_pass_rate"],
        )
        record = self._round_record(summary, [], None, 0, 0.0)
        if self.accelerator.is_main_process:
            self.store.mark_complete(r, record)
        self._report(record)

    def _report(self, record: dict) -> None:
        """Send the round's numbers to `report_to` (wandb, tensorboard, ...) through Trainer.log."""
        numbers = {f"round/{k}": float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        super(DPOTrainer, self).log(numbers)


def run_online_dpo(script_args, training_args, model_args, model_init_kwargs: dict) -> OnlineDPOResult:
    """Load prompts, build the trainer, run (or resume) every round, save the final model."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from autoif_train.prompt_data import load_prompt_rows

    # ----- Load prompts and verifiers (all validation happens here, before any model is loaded)
    prompts = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle, script_args.dataset_split)
    if script_args.max_train_samples:
        prompts = prompts[: script_args.max_train_samples]
    eval_prompts = None
    if script_args.eval_dataset_path:
        eval_prompts = load_prompt_rows(script_args.eval_dataset_path, script_args.verifier_bundle)
    if training_args.eval_every_round and not eval_prompts:
        raise ValueError("eval_every_round needs eval_dataset_path: held-out prompt rows with verifiers")

    # ----- Trainer
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    training_args.model_init_kwargs = model_init_kwargs
    trainer = AutoIFOnlineDPOTrainer(
        model=model_args.model_name_or_path, args=training_args, prompts=prompts, processing_class=tokenizer,
        peft_config=get_peft_config(model_args), eval_prompts=eval_prompts,
    )

    # ----- Rounds (resuming after the last complete one)
    trainer.start_round, checkpoint = trainer.store.resume_point()
    if checkpoint or trainer.start_round:
        logger.warning("resuming at round %d from %s", trainer.start_round, checkpoint or "the initial model")
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        trainer.close()

    # ----- Save the final policy
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
    return OnlineDPOResult(output_dir=training_args.output_dir, rounds=trainer.store.completed())
