"""Rewards: one interface that scores responses for every stage (online DPO, GRPO, synthesis, evaluation, verify).

    from autoif_train.rewards import build_reward
    with build_reward(["verifier_code"], pool=pool) as reward:
        scores = reward.score(rows, responses)     # rows[i] is the prompt row responses[i] answers
    scores.pass_rates                              # per response: float in [0, 1], None = unscored
    scores.results                                 # per response: each check's True / False / None

Rewards (recipes name them in `rewards:`, with `reward_weights:` when several):
- `verifier_code` (default): LLM-written `evaluate(response)` functions, only ever run in the sandbox pool.
- `ifeval_checkers`: IFEval / IFBench instruction ids + kwargs, scored with if-verifiable's checkers; the pass rate
  is the fraction of constraints satisfied (open-instruct's IF-RLVR reward).
- `llm_judge`: the synthesis stage's quality-score prompt through a generation backend (optional, never default).

`spread.score_spread` spreads one scoring call over the ranks of a distributed run and gathers the results.
"""

from autoif_train.rewards.base import (
    REWARDS,
    CombinedReward,
    Reward,
    RewardError,
    Scores,
    build_reward,
    check_rows,
    pass_rate,
    row_field,
)
from autoif_train.rewards.verifier_code import VerifierCodeReward, is_verifier_code, verifier_problem

__all__ = [
    "REWARDS",
    "CombinedReward",
    "Reward",
    "RewardError",
    "Scores",
    "VerifierCodeReward",
    "build_reward",
    "check_rows",
    "is_verifier_code",
    "pass_rate",
    "row_field",
    "verifier_problem",
]
