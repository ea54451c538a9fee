"""The one scoring interface: `reward.score(rows, responses) -> Scores`, and the registry recipes name.

`rows[i]` is the prompt row `responses[i]` answers (repeat a row for K samples of one prompt): a `PromptRow`, a
mapping, or (verifier_code only) a list of verifier sources. A reward reads the fields it needs (`verifier_code`:
`verifiers`; `ifeval_checkers`: `instruction_id_list` + `kwargs`) and returns, per response, the result of every
check (True / False / None) and a pass rate in [0, 1], or None when no check produced a result (the response is
unscored: it joins no pair and gets no GRPO reward). `Scores.rates(unscored=0.0)` gives AutoIF's code semantics
(all errors -> 0.0) where a number is needed.

Several rewards (`rewards: [verifier_code, ifeval_checkers]`, `reward_weights: [1, 1]`) combine into one pass rate:
the weighted mean over the rewards that scored the response; a row carrying no field a reward reads is skipped by
that reward (its share is None), and a row that no configured reward can score is an error (`check_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from autoif_train.data.rows import DataError
from autoif_train.sandbox.settings import SandboxArgs

SCORING_MODES = ("ranks", "main")

Result = bool | None


class RewardError(DataError):
    """A prompt row cannot be scored by the configured rewards (`FILE:LINE: field 'x': ...`), or a reward is
    misconfigured (`field 'rewards': ...`)."""


@dataclass
class Scores:
    """Per response: each check's result (`results`) and the pass rate (`pass_rates`, None = unscored)."""

    results: list[list[Result]] = field(default_factory=list)
    pass_rates: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pass_rates)

    @property
    def unscored(self) -> list[bool]:
        return [rate is None for rate in self.pass_rates]

    def rates(self, unscored: float | None = None) -> list[float | None]:
        """Pass rates with unscored responses as `unscored` (None keeps them None; 0.0 is AutoIF's code)."""
        return [unscored if rate is None else rate for rate in self.pass_rates]

    def records(self) -> list[dict]:
        return [{"results": r, "pass_rate": p} for r, p in zip(self.results, self.pass_rates, strict=True)]


def pass_rate(results: Sequence[Result]) -> float | None:
    """Mean over the bools in `results`; None when there is none (the response is unscored)."""
    bools = [r for r in results if r is not None]
    return sum(bools) / len(bools) if bools else None


def row_field(row: Any, name: str, default: Any = None) -> Any:
    """A prompt row's field: an attribute (a `PromptRow`, with its `extra` fields) or a mapping key."""
    if isinstance(row, dict):
        return row.get(name, default)
    if hasattr(row, name):
        return getattr(row, name)
    extra = getattr(row, "extra", None)
    return extra.get(name, default) if isinstance(extra, dict) else default


def prompt_text(row: Any) -> str:
    """The row's prompt as text: a string `messages`/`prompt`, else the content of its last user turn ("" if none)."""
    messages = row_field(row, "messages") or row_field(row, "prompt")
    if isinstance(messages, str):
        return messages
    users = [m.get("content", "") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


class Reward:
    """One reward. Subclasses set `name`, implement `applies(row)` and `score(rows, responses)`, and may implement
    `check(row) -> (field, problem) or None` (run on every row before training) and `close()`."""

    name = ""

    def applies(self, row: Any) -> bool:
        raise NotImplementedError

    def check(self, row: Any) -> tuple[str | None, str] | None:
        return None

    def score(self, rows: Sequence[Any], responses: Sequence[str]) -> Scores:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CombinedReward(Reward):
    """Several rewards, one weighted pass rate (see the module docstring); `results` are concatenated in order."""

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None):
        if not rewards:
            raise RewardError(None, None, "rewards", "name at least one reward")
        weights = list(weights) if weights is not None else [1.0] * len(rewards)
        if len(weights) != len(rewards) or any(w < 0 for w in weights) or not any(weights):
            raise RewardError(None, None, "reward_weights",
                              f"need {len(rewards)} non-negative weights, not all 0, got {weights}")
        self.rewards, self.weights = list(rewards), weights
        self.name = "+".join(r.name for r in rewards)

    def applies(self, row: Any) -> bool:
        return any(r.applies(row) for r in self.rewards)

    def check(self, row: Any) -> tuple[str | None, str] | None:
        fitting = [r for r in self.rewards if r.applies(row)]
        if not fitting:
            names = {r.name for r in self.rewards}
            return (REWARD_KEYS.get(self.rewards[0].name),
                    f"missing: no field the configured rewards ({', '.join(r.name for r in self.rewards)}) score; "
                    "needs " + " or ".join(REWARD_FIELDS[r.name] for r in self.rewards if r.name in REWARD_FIELDS)
                    + "; other rewards: " + ", ".join(f"{n} ({f})" for n, f in REWARD_FIELDS.items() if n not in names))
        for r in fitting:
            problem = r.check(row)
            if problem:
                return problem
        return None

    def score(self, rows: Sequence[Any], responses: Sequence[str]) -> Scores:
        if len(rows) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
        parts = []
        for reward in self.rewards:
            idx = [i for i, row in enumerate(rows) if reward.applies(row)]
            part = reward.score([rows[i] for i in idx], [responses[i] for i in idx]) if idx else Scores()
            full = Scores([[] for _ in rows], [None] * len(rows))
            for j, i in enumerate(idx):
                full.results[i], full.pass_rates[i] = part.results[j], part.pass_rates[j]
            parts.append(full)
        if len(parts) == 1:
            return parts[0]
        out = Scores()
        for i in range(len(rows)):
            out.results.append([x for part in parts for x in part.results[i]])
            num = sum(w * p.pass_rates[i] for w, p in zip(self.weights, parts) if p.pass_rates[i] is not None)
            den = sum(w for w, p in zip(self.weights, parts) if p.pass_rates[i] is not None)
            out.pass_rates.append(num / den if den else None)
        return out

    def close(self) -> None:
        for r in self.rewards:
            r.close()


REWARD_FIELDS = {
    "verifier_code": "'verifiers' (verifier code or bundle ids)",
    "ifeval_checkers": "'instruction_id_list' + 'kwargs' (IFEval / IFBench constraint ids)",
    "llm_judge": "'prompt' (any row)",
}
REWARD_KEYS = {"verifier_code": "verifiers", "ifeval_checkers": "instruction_id_list", "llm_judge": "prompt"}
REWARDS = tuple(REWARD_FIELDS)  # the names recipes may give in `rewards:`


def build_reward(names: Sequence[str] = ("verifier_code",), weights: Sequence[float] | None = None, *,
                 pool=None, **options) -> CombinedReward:
    """The rewards a recipe names, combined. `pool` is a `VerifierPool` for verifier_code (else one is built from
    `options`: workers, timeout, isolation); llm_judge needs `options["judge"]` (a generator)."""
    rewards: list[Reward] = []
    for name in names:
        if name == "verifier_code":
            from autoif_train.rewards.verifier_code import VerifierCodeReward

            rewards.append(VerifierCodeReward(pool=pool, workers=options.get("workers", 2),
                                              timeout=options.get("timeout", 1.0),
                                              isolation=options.get("isolation", "seccomp")))
        elif name == "ifeval_checkers":
            from autoif_train.rewards.ifeval_checkers import IFEvalCheckersReward

            rewards.append(IFEvalCheckersReward())
        elif name == "llm_judge":
            from autoif_train.rewards.llm_judge import LLMJudgeReward

            judge = options.get("judge")
            if judge is None:
                if not options.get("judge_model"):
                    raise RewardError(None, None, "judge_model",
                                      "the llm_judge reward needs one (a model path, hub id or endpoint model)")
                from autoif_train.generation import build_generator

                judge = build_generator(options.get("judge_backend", "transformers"), options["judge_model"])
            rewards.append(LLMJudgeReward(judge, threshold=options.get("judge_threshold", 8.0)))
        else:
            raise RewardError(None, None, "rewards", f"unknown reward {name!r}; known: {', '.join(REWARDS)}")
    return CombinedReward(rewards, weights)


def check_rows(reward: Reward, rows: Sequence[Any], path: str) -> None:
    """Raise `RewardError` (`FILE:LINE: field 'x': ...`) for the first row `reward` cannot score. FILE and LINE are
    where the row was read (`core.io`: a `PromptRow`'s or `Row`'s `where`); rows built in memory are named by
    `path` and their 1-based position."""
    for n, row in enumerate(rows, start=1):
        problem = reward.check(row)
        if problem:
            field_name, message = problem
            where = getattr(row, "where", None)
            if where is None or where.path == "<memory>":
                raise RewardError(path, n, field_name, message)
            raise RewardError(where.path, where.line, field_name, message)


@dataclass
class RewardFields(SandboxArgs):
    """The reward recipe keys shared by the online-DPO and GRPO configs (the verifier pool's keys, `verifier_workers`,
    `verifier_timeout`, `isolation`, are `SandboxArgs`')."""

    rewards: list[str] = field(
        default_factory=lambda: ["verifier_code"],
        metadata={"help": f"Rewards scoring each sample, from {', '.join(REWARDS)} (default verifier_code)."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward (default: equal); pass rate = weighted mean."})
    reward_scoring: str = field(
        default="ranks", metadata={"help": "ranks (every rank scores an equal share in its own pool) | main."})
    judge_model: str | None = field(default=None, metadata={"help": "llm_judge reward: the judge model."})
    judge_backend: str = field(default="transformers", metadata={"help": "llm_judge reward: transformers | vllm | "
                                                                          "openai."})
    judge_threshold: float = field(default=8.0, metadata={"help": "llm_judge reward: score >= this passes."})

    def reward_options(self) -> dict:
        """Keyword arguments of `build_reward` from these fields (besides the pool)."""
        return {"judge_model": self.judge_model, "judge_backend": self.judge_backend,
                "judge_threshold": self.judge_threshold}

    def recipe_reward(self, weights: Sequence[float] | None = None) -> CombinedReward:
        """The recipe's rewards, combined with `weights` (default `reward_weights`). Verifier code runs in a pool of
        this process's own, sized to its share of the host (`SandboxArgs.pool_settings`) and started at the first
        score; the reward's `close()` stops it."""
        workers, timeout = self.pool_settings()
        return build_reward(self.rewards, self.reward_weights if weights is None else weights, workers=workers,
                            timeout=timeout, isolation=self.isolation, **self.reward_options())

    def check_reward_fields(self) -> None:
        """Raise `RewardError` naming the field for an unknown reward name, mismatched weights or scoring mode."""
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]
        unknown = [n for n in self.rewards if n not in REWARDS]
        if not self.rewards or unknown:
            raise RewardError(None, None, "rewards", f"unknown reward(s) {unknown}; known: {', '.join(REWARDS)}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise RewardError(None, None, "reward_weights",
                              f"{len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        if "llm_judge" in self.rewards and not self.judge_model:
            raise RewardError(None, None, "judge_model", "the llm_judge reward needs one")
        if self.reward_scoring not in SCORING_MODES:
            raise RewardError(None, None, "reward_scoring",
                              f"must be one of {', '.join(SCORING_MODES)}, got {self.reward_scoring!r}")


def check_prompt_rewards(args, prompts, path: str, eval_prompts=None, eval_path: str | None = None) -> None:
    """Before any model loads: every training (and held-out) prompt row can be scored by `args.rewards`."""
    if "llm_judge" in args.rewards:
        return  # the judge scores any row with a request; nothing else to check before loading it
    reward = build_reward(args.rewards, args.reward_weights)  # builds no pool: checks only read the rows
    check_rows(reward, prompts, path)
    if eval_prompts:
        check_rows(reward, eval_prompts, str(eval_path))
