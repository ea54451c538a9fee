"""Scoring spread over the ranks of a distributed run, with verifier pools sized to the host's cores.

`score_spread(reward, rows, responses, accelerator)` is collective: every rank passes the same rows and responses,
scores the contiguous share `[r * per, (r + 1) * per)` in its own pool (`per = ceil(n / world)`), and the shares are
gathered back in input order, so every rank gets the same `Scores` as one process scoring everything (the pool's
results do not depend on how calls are batched). `mode="main"` scores everything on the main process and
broadcasts instead (one pool in the job).

Each rank's pool is sized by `sandbox.settings.host_pool_settings` (`verifier_workers: 0` shares the host's cores
among its ranks; the timeout stretches when the host is oversubscribed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from autoif_train.rewards.base import SCORING_MODES, Reward, Scores


def share(n: int, world: int, rank: int) -> range:
    """The contiguous slice of `n` items rank `rank` scores."""
    per = max(1, math.ceil(n / world))
    return range(min(n, rank * per), min(n, (rank + 1) * per))


def score_spread(reward: Reward, rows: Sequence[Any], responses: Sequence[str], accelerator=None,
                 mode: str = "ranks") -> Scores:
    """Score `responses` against `rows` over all ranks (collective; the same arguments on every rank)."""
    if mode not in SCORING_MODES:
        raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {mode!r}")
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        return reward.score(rows, responses)
    from accelerate.utils import broadcast_object_list, gather_object

    if mode == "main":
        scores = reward.score(rows, responses) if accelerator.is_main_process else None
        return broadcast_object_list([scores])[0]
    mine = share(len(rows), world, accelerator.process_index)
    part = reward.score([rows[i] for i in mine], [responses[i] for i in mine]) if len(mine) else Scores()
    # every rank sends one list (possibly empty); gather_object concatenates them in rank order
    gathered = gather_object([(part.results, part.pass_rates)])
    out = Scores()
    for results, rates in gathered:
        out.results += results
        out.pass_rates += rates
    if len(out) != len(rows):
        raise RuntimeError(f"scoring gathered {len(out)} scores for {len(rows)} responses")
    return out
