"""AutoIF iterative online DPO on top of TRL's DPOTrainer: one `train()` call that spans all rounds.

A round: draw prompts in file order from where the last round stopped, in chunks of `rollout_chunk_prompts`;
sample `num_samples` responses per prompt from the current policy (every rank an equal share,
`training.rollouts`); score each response with the recipe's rewards (`autoif_train.rewards`: its prompt's verifiers
in the sandboxed `VerifierPool`, every rank an equal share); build pairs with the AutoIF rule
(`autoif_train.data.pairs`: unscored and, by default, truncated samples join no pair). With `pairs_per_round: P` chunks are drawn until P pairs exist and the round trains on the
first P; otherwise a round is `prompts_per_round` prompts. The plan (prompts used, pairs, start step, steps) is
written before training, then DPO steps run with DPOTrainer's own loss and frozen reference model on the sampled
token ids (prompt ids + completion ids ending with the sampled end-of-turn id), never re-encoded text. With
`dedupe_sequences` (default) the round's reference log-probs are computed once per distinct sequence right after
planning and stored (`training.reference`), and each micro-batch forwards each distinct sequence once, each
distinct prompt once with `share_prompts` (`training.sequences`): TRL's losses and gradients, less compute.

Schedules and resume (`training.schedule`): every round trains a number of optimizer steps known before it starts,
with no pair visited more often than `epochs_per_round` says; the learning rate is a pure function of the global
step and the saved round boundaries. Checkpoints are written every `save_steps` steps inside a round and at its
end. A rerun resumes from the newest whole checkpoint with the same batches, optimizer, scheduler and RNG, reuses
every finished chunk, and never repeats an optimizer step; a round whose end checkpoint exists is completed from it.

How rounds fit the HF Trainer: the train "dataloader" is an iterator that produces each round's batches lazily
(sampling happens inside it, on every rank, after the previous round's steps), so DeepSpeed's engine, the optimizer
and the scheduler are created once. Assumes `output_dir` is on a filesystem every rank sees.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import SaveStrategy
from trl import DPOTrainer

from autoif_train.core.errors import RecipeError
from autoif_train.data.rows import PromptRow
from autoif_train.generation.policy import build_policy_sampler
from autoif_train.training.reference import round_reference
from autoif_train.training.rollouts import RolloutMixin
from autoif_train.training.rounds import RoundStateError, RoundStore
from autoif_train.training.schedule import Schedule, micro_batches, resolve_scope, round_steps, visit_order
from autoif_train.training.sequences import can_share_prompts, pair_loss, unsupported_reason

logger = logging.getLogger(__name__)

ROUND_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


class _RoundBatches:
    """Stands in for the train dataloader: iterating it runs the remaining rounds and yields their batches."""

    def __init__(self, trainer: AutoIFOnlineDPOTrainer):
        self.trainer = trainer

    def __iter__(self):
        return self.trainer._iterate_rounds()


class _RoundCallback(TrainerCallback):
    """Saves every `save_steps` steps inside a round and at its last step, then marks the round complete."""

    def __init__(self, trainer: AutoIFOnlineDPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        cur, every = self.trainer._current, self.trainer.save_every
        if cur is not None and state.global_step >= cur["end_step"]:
            control.should_save = True
            control.should_log = True
        elif cur is not None and every and (state.global_step - cur["start_step"]) % every == 0:
            control.should_save = True
        return control

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


class AutoIFOnlineDPOTrainer(RolloutMixin, DPOTrainer):
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
        # Rounds decide when to checkpoint (every `save_steps` inside a round when save_strategy is "steps").
        steps_strategy = str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps"
        self.save_every = int(args.save_steps) if steps_strategy and args.save_steps and args.save_steps >= 1 else 0
        args.save_strategy = SaveStrategy.NO
        args.ignore_data_skip = True  # the round iterator skips what a mid-round checkpoint already trained
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
        # each distinct sequence forwarded once (`training.sequences`), against the round's stored reference
        # log-probs (`training.reference`), which the batches carry as TRL's precomputed ones
        reason = unsupported_reason(self) if args.dedupe_sequences else None
        if reason:
            logger.warning("dedupe_sequences is off for this run (%s): TRL's pairwise DPO forward", reason)
        self.dedupe = bool(args.dedupe_sequences) and reason is None
        self.share_prompts = self.dedupe and can_share_prompts(self)
        self.precompute_ref_logps = self.dedupe
        world = self.accelerator.num_processes
        self.per_step = world * args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.rule = args.pair_rule()
        self.round_budget = round_steps(args.pairs_per_round, args.epochs_per_round, self.per_step) \
            if args.pairs_per_round else None
        scope = resolve_scope(args.lr_schedule_scope, str(getattr(args.lr_scheduler_type, "value",
                                                                   args.lr_scheduler_type)),
                              total_known=self.round_budget is not None)
        self.schedule = Schedule(
            scheduler=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            warmup=args.warmup_steps, scope=scope, scheduler_kwargs=dict(args.lr_scheduler_kwargs or {}),
            total_steps=self.round_budget * args.num_rounds if self.round_budget else None,
        )
        # train() stops when the rounds run out; max_steps is the progress bar's total: exact with pairs_per_round,
        # else an estimate that becomes exact when the last round is planned
        args.max_steps = self.schedule.total_steps or self._steps_estimate(0, 0)
        self.add_callback(_RoundCallback(self))
        self.store = RoundStore(args.output_dir)
        self.sampler = build_policy_sampler(self, args)
        self.start_round = 0
        self._current: dict | None = None
        self._rewards = None
        self._prompt_ids: dict[str, list[int]] = {}
        # A fresh run samples round 0 from the weights the sampler loaded (a vLLM server or colocated engine started
        # from the same checkpoint needs no push); run_online_dpo sets this when it resumes from a checkpoint.
        self._weights_dirty = False
        self._sync_seconds = 0.0

    # ----- schedule ------------------------------------------------------------------------------------------
    def _steps_estimate(self, from_prompt: int, planned_steps: int) -> int:
        """Steps planned so far plus, for the fixed-prompt rounds left, the mean of the rounds planned so far (the
        most a round can train before any is planned). Exact once the last round is planned."""
        args = self.args
        left = max(0, min(args.num_rounds - len(self.schedule.starts),
                          math.ceil((len(self.prompts) - from_prompt) / args.prompts_per_round)))
        lengths = self.schedule.lengths
        per_round = math.ceil(sum(lengths) / len(lengths)) if lengths else round_steps(
            args.prompts_per_round * args.max_chosen * args.max_rejected, args.epochs_per_round, self.per_step)
        return max(1, planned_steps + left * per_round)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """A LambdaLR whose factor is `self.schedule.factor(step)` (transformers' schedule shapes)."""
        if self.lr_scheduler is None:
            schedule = self.schedule
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  lambda step: schedule.factor(step))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _refresh_lr(self) -> None:
        """Re-evaluate the learning rate at the current step once a new round's boundaries are known."""
        sched = self.lr_scheduler
        if sched is None:
            return
        factor = self.schedule.factor(self.state.global_step)
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * factor
        sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's DPO loss (`dedupe_sequences`: each distinct sequence forwarded once, `training.sequences`), times the
        micro-batch's weight (0 for a filler slot of a round's last step)."""
        weight = inputs.pop("loss_weight", 1.0)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if weight == 1.0:
            return out
        return (out[0] * weight, out[1]) if return_outputs else out * weight

    def _compute_loss(self, model, inputs, return_outputs):
        if self.dedupe and not return_outputs:
            return pair_loss(self, model, inputs)
        return super()._compute_loss(model, inputs, return_outputs)

    # ----- rounds --------------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        return _RoundBatches(self)

    def _iterate_rounds(self):
        completed = self.store.completed() if self.accelerator.is_main_process else None
        completed = broadcast_object_list([completed])[0]
        for rec in completed:  # rebuild the schedule's boundaries from the saved plans
            if rec.get("train_steps"):
                self.schedule.add_round(rec["global_step"] - rec["train_steps"], rec["train_steps"])
        next_prompt = completed[-1]["prompt_end"] if completed else 0
        if completed and self.args.eval_every_round and self.eval_prompts and "heldout_pass_rate" not in completed[-1]:
            self._finish_heldout(len(completed) - 1, completed[-1])  # killed after complete.json, before held-out
        r = self.start_round
        while r < self.args.num_rounds and next_prompt < len(self.prompts):
            pairs, plan = self._prepare_round(r, next_prompt)
            next_prompt = plan["prompt_end"]
            self.schedule.add_round(plan["start_step"], plan["steps"])
            planned = plan["start_step"] + plan["steps"]
            if self.schedule.total_steps is None:
                self.state.max_steps = self._steps_estimate(next_prompt, planned)
                self._set_progress_total(self.state.max_steps)
            self._refresh_lr()
            if not plan["steps"]:
                self._finish_empty_round(r, plan)
                r += 1
                continue
            done = self.state.global_step - plan["start_step"]  # optimizer steps a mid-round checkpoint holds
            if not 0 <= done <= plan["steps"]:
                raise RoundStateError(f"round {r} trains steps {plan['start_step']}..{planned} but the checkpoint is "
                                      f"at step {self.state.global_step}: use a new output_dir")
            self._current = {"round": r, "summary": plan, "train_start": time.time(), "steps": plan["steps"],
                             "start_step": plan["start_step"], "end_step": planned}
            self._weights_dirty = True
            if done == plan["steps"]:  # killed between the round's end checkpoint and its completion marker
                self._finish_round(self._current, checkpoint=f"checkpoint-{self.state.global_step}")
            else:
                yield from self._round_batches(r, pairs, plan["steps"])[done * self.args.gradient_accumulation_steps:]
            r += 1
        self.control.should_training_stop = True

    def _set_progress_total(self, total: int) -> None:
        for cb in self.callback_handler.callbacks:
            bar = getattr(cb, "training_bar", None)
            if bar is not None:
                bar.total = total
                bar.refresh()

    def close(self) -> None:
        """Stop the rewards (and this rank's verifier pool) and the sampler's engine, if it has one."""
        if self._rewards is not None:
            self._rewards.close()
            self._rewards = None
        if hasattr(self.sampler, "close"):
            self.sampler.close()

    def _round_batches(self, r: int, pairs: list[dict], steps: int) -> list[dict]:
        """This rank's collated micro-batches for round `r`: `steps` optimizer steps on every rank, no visit repeated
        beyond `epochs_per_round` (`training.schedule.micro_batches`)."""
        by_id = {row.id: row for row in self.prompts}
        unknown = {p["prompt_id"] for p in pairs} - by_id.keys()
        if unknown:
            raise RoundStateError(f"{self.store.round_dir(r)}/pairs.jsonl names prompts {sorted(unknown)[:3]} that are "
                                  f"not in this run's data: the dataset changed; use a new output_dir")
        examples = [{"prompt_ids": self._encoded(by_id[p["prompt_id"]]), "chosen_ids": p["chosen_ids"],
                     "rejected_ids": p["rejected_ids"]} for p in pairs]
        if self.dedupe:  # the reference log-probs of the round's distinct sequences, once (collective)
            t0 = time.time()
            prompt_ids = {pid: self._encoded(by_id[pid]) for pid in {p["prompt_id"] for p in pairs}}
            ref, _ = round_reference(self, r, pairs, prompt_ids)
            if self._current is not None:
                self._current["summary"]["reference_seconds"] = time.time() - t0
            for e, p in zip(examples, pairs, strict=True):
                e["ref_chosen_logps"] = ref[(p["prompt_index"], p["chosen_sample"])]
                e["ref_rejected_logps"] = ref[(p["prompt_index"], p["rejected_sample"])]
        args, acc = self.args, self.accelerator
        order = visit_order(len(examples), args.epochs_per_round, seed=args.seed * 7919 + r)
        batches = []
        for indices, weight in micro_batches(order, steps, acc.num_processes, args.gradient_accumulation_steps,
                                             args.per_device_train_batch_size, acc.process_index):
            batch = self.data_collator([examples[i] for i in indices])
            batch["loss_weight"] = weight
            batches.append(batch)
        return batches

    def _round_record(self, plan: dict, checkpoint, steps: int, seconds: float) -> dict:
        """The round's record: its plan plus the mean of each DPO metric over the round's logged steps (read from
        the trainer's log history, which a checkpoint restores)."""
        record = {k: v for k, v in plan.items() if k != "reused_pairs"}
        record["reused_pairs"] = plan.get("reused_pairs", False)
        lo, hi = plan["start_step"], plan["start_step"] + steps
        logs = [log for log in self.state.log_history if lo < log.get("step", -1) <= hi
                and not any(key.startswith("round/") for key in log)]
        for key in ROUND_METRICS:
            values = [log[key] for log in logs if key in log]
            name = "dpo_loss" if key == "loss" else key.replace("/", "_")
            record[name] = sum(values) / len(values) if values else None
        record.update(checkpoint=checkpoint, global_step=self.state.global_step, train_steps=steps,
                      training_seconds=seconds)
        if torch.cuda.is_available():  # this rank's peak since the start (training, sampling, vLLM's pool)
            record["peak_gpu_memory_gib"] = torch.cuda.max_memory_reserved() / 2**30
        return record

    def _finish_round(self, cur: dict, checkpoint: str) -> None:
        record = self._round_record(cur["summary"], checkpoint, cur["steps"], time.time() - cur["train_start"])
        self._current = None
        self.accelerator.wait_for_everyone()  # every rank's checkpoint shard is on disk
        if self.accelerator.is_main_process:
            self.store.mark_complete(cur["round"], record)  # before the held-out evaluation: never retrained
            self._rotate_checkpoints()
        self._report(record)
        if self.args.eval_every_round and self.eval_prompts:
            self._finish_heldout(cur["round"], record)

    def _finish_heldout(self, r: int, record: dict) -> None:
        """Held-out pass rate after round `r`, merged into its complete.json (rerun on resume when missing)."""
        record = dict(record, heldout_pass_rate=self._heldout_pass_rate(r))
        if self.accelerator.is_main_process:
            self.store.mark_complete(r, record)
        self._report({"round": r, "heldout_pass_rate": record["heldout_pass_rate"]})

    def _rotate_checkpoints(self) -> None:
        """Drop mid-round checkpoints, then keep the newest `save_total_limit` round checkpoints (all when unset)."""
        ends = {rec["checkpoint"] for rec in self.store.completed() if rec.get("checkpoint")}
        round_end = []
        for step, path in self.store.checkpoints():
            if path.name in ends:
                round_end.append(path)
            elif step < self.state.global_step:
                shutil.rmtree(path, ignore_errors=True)
        if self.keep_checkpoints:
            for old in round_end[: -self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def _finish_empty_round(self, r: int, plan: dict) -> None:
        logger.warning(
            "round %d: no prompt gave both a response with pass rate >= %s and one <= %s (%d prompts, mean pass "
            "rate %.3f); nothing to train on, round logged and skipped", r, self.rule.chosen_threshold,
            self.rule.rejected_threshold, plan["prompts"], plan["mean_pass_rate"],
        )
        record = self._round_record(plan, None, 0, 0.0)
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

    from autoif_train.data.rows import load_prompt_rows
    from autoif_train.rewards.base import check_prompt_rewards

    # ----- Load prompts and verifiers (all validation happens here, before any model is loaded)
    prompts = load_prompt_rows(script_args.dataset_path, script_args.verifier_bundle, script_args.dataset_split)
    if script_args.max_train_samples:
        prompts = prompts[: script_args.max_train_samples]
    eval_prompts = None
    if script_args.eval_dataset_path:
        eval_prompts = load_prompt_rows(script_args.eval_dataset_path, script_args.verifier_bundle)
    check_prompt_rewards(training_args, prompts, script_args.dataset_path, eval_prompts, script_args.eval_dataset_path)
    if training_args.eval_every_round and not eval_prompts:
        raise RecipeError(None, None, "eval_every_round", "needs eval_dataset_path: held-out prompt rows with verifiers")

    # ----- A finished run (every round complete, final model saved) is reported, not retrained
    done = RoundStore(training_args.output_dir).completed()
    out_of_prompts = bool(done) and done[-1].get("prompt_end", 0) >= len(prompts)
    saved = any((Path(training_args.output_dir) / f).is_file() for f in ("config.json", "adapter_config.json"))
    heldout_missing = training_args.eval_every_round and bool(done) and "heldout_pass_rate" not in done[-1]
    if done and (len(done) >= training_args.num_rounds or out_of_prompts) and saved and not heldout_missing:
        print(f"all {len(done)} rounds complete in {training_args.output_dir}; nothing left to train (raise "
              "num_rounds, or give a new output_dir to start over)")
        return OnlineDPOResult(output_dir=training_args.output_dir, rounds=done)

    # ----- Trainer
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    training_args.model_init_kwargs = model_init_kwargs
    trainer = AutoIFOnlineDPOTrainer(
        model=model_args.model_name_or_path, args=training_args, prompts=prompts, processing_class=tokenizer,
        peft_config=get_peft_config(model_args), eval_prompts=eval_prompts,
    )

    # ----- Rounds (resuming from the newest whole checkpoint)
    trainer.start_round, checkpoint = trainer.store.resume_point()

    trainer._weights_dirty = checkpoint is not None  # the sampler's engine holds the initial weights
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
