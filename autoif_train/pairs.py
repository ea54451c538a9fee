"""AutoIF's pair rule: turn K scored responses to one prompt into DPO (chosen, rejected) pairs.

chosen = pass rate >= `chosen_threshold` (0.5), rejected = pass rate <= `rejected_threshold` (0, i.e. == 0);
at most `max_chosen` x `max_rejected` pairs per prompt (2 x 2 in AutoIF's public code). Identical response
texts count once. A prompt without at least one chosen and one rejected response yields no pair and is
reported as skipped. The rule does not judge whether a response still answers the query: that is the
synthesis stage's quality filter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PairRule:
    """Thresholds and caps of the pair rule (defaults = the paper / AutoIF code)."""

    chosen_threshold: float = 0.5
    rejected_threshold: float = 0.0
    max_chosen: int = 2
    max_rejected: int = 2

    def __post_init__(self):
        if self.rejected_threshold >= self.chosen_threshold:
            raise ValueError(
                f"rejected_threshold ({self.rejected_threshold}) must be below chosen_threshold ({self.chosen_threshold})"
            )
        if self.max_chosen < 1 or self.max_rejected < 1:
            raise ValueError("max_chosen and max_rejected must be >= 1")


def select_pairs(
    responses: list[str], pass_rates: list[float], rule: PairRule = PairRule(), seed: int = 0
) -> list[tuple[int, int]]:
    """Indices (chosen, rejected) into `responses` for one prompt; [] when the prompt has no valid pair.

    When more responses qualify than the caps allow, a seeded random subset is taken (AutoIF samples too), so
    the same inputs and seed always give the same pairs.
    """
    if len(responses) != len(pass_rates):
        raise ValueError(f"{len(responses)} responses but {len(pass_rates)} pass rates")
    chosen, rejected, seen = [], [], set()
    for i, (text, rate) in enumerate(zip(responses, pass_rates)):
        if text in seen:
            continue
        seen.add(text)
        if rate >= rule.chosen_threshold:
            chosen.append(i)
        elif rate <= rule.rejected_threshold:
            rejected.append(i)
    if not chosen or not rejected:
        return []
    rng = random.Random(seed)
    if len(chosen) > rule.max_chosen:
        chosen = sorted(rng.sample(chosen, rule.max_chosen))
    if len(rejected) > rule.max_rejected:
        rejected = sorted(rng.sample(rejected, rule.max_rejected))
    return [(c, r) for c in chosen for r in rejected]


@dataclass
class PairStats:
    """Counts for one round: prompts seen, prompts that yielded >= 1 pair, pairs."""

    prompts: int = 0
    prompts_with_pair: int = 0
    pairs: int = 0

    @property
    def skipped(self) -> int:
        return self.prompts - self.prompts_with_pair

    @property
    def pair_share(self) -> float:
        return self.prompts_with_pair / self.prompts if self.prompts else 0.0


def build_round_pairs(
    prompt_ids: list[str],
    responses: list[list[str]],
    pass_rates: list[list[float]],
    rule: PairRule = PairRule(),
    seed: int = 0,
) -> tuple[list[dict], PairStats]:
    """Pairs for a whole round: `[{"prompt_index", "prompt_id", "chosen", "rejected", ...pass rates}]` and counts."""
    pairs, stats = [], PairStats(prompts=len(prompt_ids))
    for p, (pid, texts, rates) in enumerate(zip(prompt_ids, responses, pass_rates, strict=True)):
        chosen_rejected = select_pairs(texts, rates, rule, seed=seed * 1_000_003 + p)
        if chosen_rejected:
            stats.prompts_with_pair += 1
        for c, r in chosen_rejected:
            pairs.append({
                "prompt_index": p, "prompt_id": pid, "chosen": texts[c], "rejected": texts[r],
                "chosen_pass_rate": rates[c], "rejected_pass_rate": rates[r],
            })
    stats.pairs = len(pairs)
    return pairs, stats
