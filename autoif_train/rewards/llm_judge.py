"""`llm_judge`: the synthesis stage's quality-score prompt (`synth.prompts.QUALITY_JUDGE`) through any generation
backend. Optional and never the default: it costs a model call per response and judges quality, not constraints.

A row's request is its `query` field (or, without one, its last user message) and its constraint its `instruction`
field (or "(stated in the request)"). One check per response: score >= `threshold` (synthesis: 8); the pass rate is
the score / 10. An unparseable or out-of-range answer leaves the response unscored (None), never 0. Greedy by
default, so one judge gives one answer per (row, response). Not protected against: a judge that is wrong, or that
the response talks into a high score (it reads the response as text, nothing runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autoif_train.rewards.base import Reward, Scores, prompt_text, row_field


def _request(row: Any) -> str:
    query = row_field(row, "query")
    if isinstance(query, str) and query.strip():
        return query
    return prompt_text(row)


class LLMJudgeReward(Reward):
    """Score responses with a judge model's 0-10 quality score (see the module docstring)."""

    name = "llm_judge"

    def __init__(self, generator, threshold: float = 8.0, max_new_tokens: int = 256, temperature: float = 0.0):
        self.generator, self.threshold = generator, float(threshold)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)

    def applies(self, row: Any) -> bool:
        return bool(_request(row))

    def score(self, rows: Sequence[Any], responses: Sequence[str]) -> Scores:
        from autoif_train.generation import GenerationConfig
        from autoif_train.synth.parsing import parse_score
        from autoif_train.synth.prompts import QUALITY_JUDGE

        if len(rows) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
        if not rows:
            return Scores()
        prompts = [QUALITY_JUDGE.format(query=_request(row), instruction=row_field(row, "instruction")
                                        or "(stated in the request)", response=response)
                   for row, response in zip(rows, responses)]
        config = GenerationConfig(n=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=0)
        answers = self.generator.generate(prompts, config)
        out = Scores()
        for answer in answers:
            score = parse_score(answer[0]) if answer else None
            out.results.append([None if score is None else score >= self.threshold])
            out.pass_rates.append(None if score is None else score / 10.0)
        return out

    def close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()
