"""AutoIF's pair rule, the one rule of every stage: turn K scored responses to one prompt into DPO (chosen, rejected)
pairs. Online rounds (`build_round_pairs`) and `autoif synth`'s offline pairs (`synth/export`) both call
`prompt_pairs`, so the same scored responses give the same pairs in both.

chosen = pass rate >= `chosen_threshold` (0.5), rejected = pass rate <= `rejected_threshold` (0, i.e. == 0);
at most `max_chosen` x `max_rejected` pairs per prompt (2 x 2 in AutoIF's public code). Identical response
texts count once. A response whose pass rate is None (no check returned a result: timeout, crash, disabled, or a
failed quality judge for a would-be chosen answer) joins no pair. A response cut at max_new_tokens (finish reason
"length") follows `truncated`: "exclude" (default; neither chosen nor rejected, like TRL's
`mask_truncated_completions`), "penalize" (pass rate taken as 0, so it can only be rejected, like TRL's
`missing_eos_penalty`) or "keep" (scored like any other). When more responses qualify than the caps allow,
`ranking` picks them: "random" (default; a subset seeded by (seed, prompt id), as AutoIF samples), "quality"
(explicit option: the highest pass rate, then judge score, first; rejected in response order) or "length" (the
longest chosen and the shortest rejected texts first: short answers pass "avoid X" checks more often, so random
pairs mostly prefer the shorter answer and the policy's answers shrink round by round; this counters that only as
far as the caps leave a choice, i.e. with more than 2 + 2 qualifying samples). A prompt without at
least one chosen and one rejected response yields no pair and is reported as skipped. The rule does not judge
whether a response still answers the query: that is the synthesis stage's quality filter.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

TRUNCATED_MODES = ("exclude", "penalize", "keep")
RANKINGS = ("random", "quality", "length")


@dataclass(frozen=True)
class PairRule:
    """Thresholds, caps and ranking of the pair rule (defaults = the paper / AutoIF code)."""

    chosen_threshold: float = 0.5
    rejected_threshold: float = 0.0
    max_chosen: int = 2
    max_rejected: int = 2
    truncated: str = "exclude"
    ranking: str = "random"

    def __post_init__(self):
        if self.truncated not in TRUNCATED_MODES:
            raise ValueError(f"truncated_samples must be one of {TRUNCATED_MODES}, got {self.truncated!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"pair_ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if self.rejected_threshold >= self.chosen_threshold:
            raise ValueError(
                f"rejected_threshold ({self.rejected_threshold}) must be below chosen_threshold ({self.chosen_threshold})"
            )
        if self.max_chosen < 1 or self.max_rejected < 1:
            raise ValueError("max_chosen and max_rejected must be >= 1")


@dataclass
class PairRuleFields:
    """The pair rule's recipe keys: one block shared by the online-DPO config and `autoif synth`'s config."""

    chosen_threshold: float = field(default=0.5, metadata={"help": "Pair rule: pass rate >= this is chosen."})
    rejected_threshold: float = field(default=0.0, metadata={"help": "Pair rule: pass rate <= this is rejected."})
    max_chosen: int = field(default=2, metadata={"help": "Pair rule: at most this many chosen responses per prompt."})
    max_rejected: int = field(default=2, metadata={"help": "Pair rule: at most this many rejected per prompt."})
    truncated_samples: str = field(
        default="exclude", metadata={"help": "Pair rule, samples cut at max_new_tokens: exclude (join no pair) | "
                                             "penalize (pass rate 0, rejected only) | keep."})
    pair_ranking: str = field(
        default="random", metadata={"help": "Pair rule, more qualify than the caps: random (seeded subset, AutoIF) | "
                                            "quality (highest pass rate / judge score first) | length (longest chosen, shortest "
                                            "rejected first)."})

    def pair_rule(self) -> PairRule:
        return PairRule(self.chosen_threshold, self.rejected_threshold, self.max_chosen, self.max_rejected,
                        truncated=self.truncated_samples, ranking=self.pair_ranking)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The seed of one prompt's pair subset: a function of the run seed and the prompt id only (not its position)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "big")


def effective_rate(rate: float | None, truncated: bool, rule: PairRule) -> float | None:
    """The pass rate the rule uses: None (joins no pair) when unscored or a truncated sample is excluded."""
    if rate is None:
        return None
    if truncated and rule.truncated == "exclude":
        return None
    if truncated and rule.truncated == "penalize":
        return 0.0
    return rate


def select_pairs(
    responses: list[str], pass_rates: list[float | None], rule: PairRule = PairRule(), seed: int = 0,
    truncated: list[bool] | None = None, quality: list[float | None] | None = None,
) -> list[tuple[int, int]]:
    """Indices (chosen, rejected) into `responses` for one prompt; [] when the prompt has no valid pair.

    `pass_rates` entries may be None (unscored); `truncated[i]` marks a response cut at max_new_tokens; `quality`
    (judge scores) only orders chosen answers under `ranking="quality"`. The same inputs and seed always give the
    same pairs.
    """
    if len(responses) != len(pass_rates):
        raise ValueError(f"{len(responses)} responses but {len(pass_rates)} pass rates")
    truncated = truncated or [False] * len(responses)
    rates: list[float | None] = []
    chosen, rejected, seen = [], [], set()
    for i, (text, raw, cut) in enumerate(zip(responses, pass_rates, truncated, strict=True)):
        rate = effective_rate(raw, cut, rule)
        rates.append(rate)
        if rate is None or text in seen:
            continue
        seen.add(text)
        if rate >= rule.chosen_threshold:
            chosen.append(i)
        elif rate <= rule.rejected_threshold:
            rejected.append(i)
    if not chosen or not rejected:
        return []
    if rule.ranking == "quality":
        score = quality or [None] * len(responses)
        chosen = sorted(chosen, key=lambda i: (-rates[i], -(score[i] or 0)))[: rule.max_chosen]
        rejected = rejected[: rule.max_rejected]
    elif rule.ranking == "length":
        chosen = sorted(sorted(chosen, key=lambda i: -len(responses[i]))[: rule.max_chosen])
        rejected = sorted(sorted(rejected, key=lambda i: len(responses[i]))[: rule.max_rejected])
    else:
        rng = random.Random(seed)
        if len(chosen) > rule.max_chosen:
            chosen = sorted(rng.sample(chosen, rule.max_chosen))
        if len(rejected) > rule.max_rejected:
            rejected = sorted(rng.sample(rejected, rule.max_rejected))
    return [(c, r) for c in chosen for r in rejected]


def prompt_pairs(prompt_id: str, responses: list[str], pass_rates: list[float | None], rule: PairRule, seed: int,
                 truncated: list[bool] | None = None, quality: list[float | None] | None = None
                 ) -> list[tuple[int, int]]:
    """`select_pairs` for one prompt, seeded by (`seed`, `prompt_id`): what every stage calls."""
    return select_pairs(responses, pass_rates, rule, prompt_seed(seed, prompt_id), truncated, quality)


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
    samples: list[dict], pass_rates: list[float | None], rule: PairRule = PairRule(), seed: int = 0,
    num_prompts: int | None = None,
) -> tuple[list[dict], PairStats]:
    """Pairs for a whole round from its sample records (`prompt_index`, `prompt_id`, `sample_index`, `text`,
    `completion_ids`, `finish_reason`, in prompt order) and one pass rate (or None) per sample.

    Each pair: `prompt_index`, `prompt_id`, the two sample indices, texts, completion ids and pass rates."""
    if len(samples) != len(pass_rates):
        raise ValueError(f"{len(samples)} samples but {len(pass_rates)} pass rates")
    groups: dict[int, list[int]] = {}
    for k, s in enumerate(samples):
        groups.setdefault(s["prompt_index"], []).append(k)
    pairs, stats = [], PairStats(prompts=len(groups) if num_prompts is None else num_prompts)
    for p, members in sorted(groups.items()):
        texts = [samples[k]["text"] for k in members]
        rates = [pass_rates[k] for k in members]
        cut = [samples[k]["finish_reason"] == "length" for k in members]
        chosen_rejected = prompt_pairs(samples[members[0]]["prompt_id"], texts, rates, rule, seed, truncated=cut)
        if chosen_rejected:
            stats.prompts_with_pair += 1
        for c, r in chosen_rejected:
            sc, sr = samples[members[c]], samples[members[r]]
            pairs.append({
                "prompt_index": p, "prompt_id": sc["prompt_id"],
                "chosen_sample": sc["sample_index"], "rejected_sample": sr["sample_index"],
                "chosen": sc["text"], "rejected": sr["text"],
                "chosen_ids": sc["completion_ids"], "rejected_ids": sr["completion_ids"],
                "chosen_pass_rate": rates[c], "rejected_pass_rate": effective_rate(rates[r], cut[r], rule),
            })
    stats.pairs = len(pairs)
    return pairs, stats
