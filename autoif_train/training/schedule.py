"""Exact online-DPO schedules: how many optimizer steps a round trains, which pairs each micro-batch holds, and the
learning rate as a pure function of the global step and the round boundaries saved on disk.

Step budget. A round with N pairs and `epochs_per_round` E trains V = round(N x E) pair visits in
ceil(V / (world x per_device_batch x grad_accum)) optimizer steps. Visits come from whole shuffled passes, the last
one cut at V, so no pair is seen twice more often than E says. The last step gets only the visits that are left,
spread over its micro-batches; a micro-batch slot left empty (fewer visits than slots) holds a copy of a visited
pair with loss weight 0 (every rank must run the same number of forward/backward passes under DeepSpeed).

Learning rate. `lr_schedule_scope`:
- `global`: warm-up and decay over the run's total steps, known before training when `pairs_per_round` is set
  (every round then trains exactly `round_steps(pairs_per_round, ...)` steps) — the paper's cosine with 0.1 warm-up;
- `round`: each round its own warm-up and decay over its own steps (known once its pairs are);
- `auto` (default): `global` when the total is known or the schedule does not depend on it (constant), else `round`.
The factor at a step comes from transformers' own schedule functions (`get_scheduler`), evaluated at the step's
offset, so resume rebuilds it exactly from the saved boundaries. Not protected against: schedules whose lambda
keeps state between calls (none of transformers' do).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

TOTAL_FREE = {"constant"}  # schedules whose factor does not depend on the number of training steps
SCOPES = ("auto", "global", "round")


def round_steps(num_pairs: int, epochs: float, per_step: int) -> int:
    """Optimizer steps for a round of `num_pairs` pairs (0 when there are none)."""
    visits = round(num_pairs * epochs)
    return math.ceil(visits / per_step) if num_pairs and visits else 0


def visit_order(num_pairs: int, epochs: float, seed: int) -> list[int]:
    """Pair indices in training order: whole seeded shuffles, the last cut so there are round(N x E) visits."""
    visits, rng, order = round(num_pairs * epochs), random.Random(seed), []
    while len(order) < visits:
        perm = list(range(num_pairs))
        rng.shuffle(perm)
        order += perm
    return order[:visits]


def micro_batches(order: list[int], steps: int, world: int, grad_accum: int, batch: int, rank: int):
    """This rank's micro-batches, in order: `(pair indices, weight)` per micro-batch, `grad_accum` per step.

    Full steps take `world x grad_accum x batch` visits; the last step spreads what is left over its
    `world x grad_accum` slots as evenly as possible. An empty slot holds the step's first visit with weight 0."""
    per_step, slots, out = world * grad_accum * batch, world * grad_accum, []
    for s in range(steps):
        chunk = order[s * per_step : (s + 1) * per_step]
        for g in range(grad_accum):
            slot = g * world + rank
            if len(chunk) == per_step:
                out.append((chunk[slot * batch : (slot + 1) * batch], 1.0))
            else:
                mine = chunk[slot::slots]
                out.append((mine, 1.0) if mine else ([chunk[0]], 0.0))
    return out


@dataclass
class Schedule:
    """Round boundaries (start step and steps of each planned round) and the recipe's scheduler settings."""

    scheduler: str
    warmup: float | int  # a ratio (< 1) or a number of steps, as TrainingArguments.warmup_steps
    scope: str
    scheduler_kwargs: dict = field(default_factory=dict)
    total_steps: int | None = None  # global scope only
    starts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    _lambdas: dict = field(default_factory=dict, repr=False)

    def add_round(self, start: int, steps: int) -> None:
        """Record a round's boundaries (rounds in order; re-adding a known round with the same values is a no-op)."""
        if self.starts and start < self.starts[-1]:
            i = self.starts.index(start)
            if self.lengths[i] != steps:
                raise ValueError(f"round at step {start} was planned with {self.lengths[i]} steps, now {steps}")
            return
        if self.starts and start == self.starts[-1]:
            self.lengths[-1] = steps
            return
        self.starts.append(start)
        self.lengths.append(steps)

    def _lambda(self, length: int):
        if length not in self._lambdas:
            import torch
            from transformers import get_scheduler

            warmup = math.ceil(self.warmup * length) if 0 < self.warmup < 1 else int(self.warmup)
            dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            sched = get_scheduler(self.scheduler, dummy, num_warmup_steps=warmup, num_training_steps=length,
                                  scheduler_specific_kwargs=self.scheduler_kwargs or None)
            self._lambdas[length] = sched.lr_lambdas[0]
        return self._lambdas[length]

    def factor(self, step: int) -> float:
        """Learning-rate multiplier before optimizer step `step + 1` (LambdaLR's convention)."""
        if self.scope == "global":
            return self._lambda(max(1, self.total_steps or 1))(step)
        i = bisect.bisect_right(self.starts, step) - 1
        if i < 0:
            return self._lambda(max(1, self.lengths[0] if self.lengths else 1))(0)
        return self._lambda(max(1, self.lengths[i]))(min(step - self.starts[i], max(0, self.lengths[i] - 1)))


def resolve_scope(scope: str, scheduler: str, total_known: bool) -> str:
    """`auto` -> `global` when the total is known or irrelevant, else `round`; `global` without a known total is an
    error (the schedule would end in the wrong place)."""
    if scope not in SCOPES:
        raise ValueError(f"lr_schedule_scope must be one of {SCOPES}, got {scope!r}")
    if scope == "auto":
        return "global" if total_known or scheduler in TOTAL_FREE else "round"
    if scope == "global" and not total_known and scheduler not in TOTAL_FREE:
        raise ValueError(
            f"lr_schedule_scope: global with lr_scheduler_type {scheduler!r} needs the run's total steps before "
            "training: set pairs_per_round (each round then trains a known number of steps), or use "
            "lr_schedule_scope: round"
        )
    return scope
