"""`ifeval_checkers`: IFEval / IFBench constraint ids + kwargs scored with if-verifiable's maintained checkers.

A row carries its constraints as `instruction_id_list` + `kwargs` (IFEval's schema, one kwargs object or null per
id), or as `ground_truth` in the shape of `allenai/IF_multi_constraints_upto5` (a JSON or Python-literal string, or
the object itself: `{"instruction_id": [...], "kwargs": [...]}`, possibly inside a one-element list). Ids are looked
up in IFEval's registry, then IFBench's (they do not overlap). Each constraint is checked exactly as the evaluation
does (`evaluation.instruction_following.score_row`, strict): kwargs that are None dropped, the prompt given to
checkers that take it, an empty response follows nothing, a checker that raises counts as not followed. The pass
rate is the fraction of the row's constraints satisfied, the reward open-instruct's IF-RLVR (`ground_truth_utils`,
`IFEvalVerifier`) trains on.

The checkers are trusted library code that only reads the response, so they run in the calling process. Not
protected against: the checkers' own mistakes, and `<think>` blocks (not stripped; the response is checked as is).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from typing import Any

from autoif_train.rewards.base import Reward, RewardError, Scores, prompt_text, row_field

REGISTRIES = ("if_verifiable.ifeval.instructions_registry", "if_verifiable.ifbench.instructions_registry")


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise ValueError(f"not JSON or a Python literal ({type(err).__name__})") from err


def row_constraints(row: Any) -> tuple[list, list] | None:
    """(instruction ids, kwargs) a row carries, None when it carries none; `RewardError` naming the field (no file)
    if malformed."""
    ids, kwargs = row_field(row, "instruction_id_list"), row_field(row, "kwargs")
    name = "instruction_id_list"
    if ids is None:
        truth = row_field(row, "ground_truth")
        if truth is None:
            return None
        name = "ground_truth"
        if isinstance(truth, str):
            try:
                truth = _literal(truth)
            except ValueError as err:
                raise RewardError(None, None, "ground_truth", f"is {err}") from err
        if isinstance(truth, list) and len(truth) == 1:
            truth = truth[0]
        if not isinstance(truth, dict) or "instruction_id" not in truth:
            raise RewardError(None, None, "ground_truth", "must hold {'instruction_id': [...], 'kwargs': [...]}")
        ids, kwargs = truth["instruction_id"], truth.get("kwargs")
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise RewardError(None, None, name, "instruction ids must be a non-empty list of strings")
    kwargs = [{} for _ in ids] if kwargs is None else kwargs
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(k is None or isinstance(k, dict)
                                                                           for k in kwargs):
        raise RewardError(None, None, "kwargs" if name == "instruction_id_list" else name,
                          f"kwargs must be a list of {len(ids)} objects (or null), one per instruction id")
    return ids, [k or {} for k in kwargs]


class IFEvalCheckersReward(Reward):
    """Fraction of a row's IFEval / IFBench constraints a response satisfies (see the module docstring)."""

    name = "ifeval_checkers"

    def __init__(self):
        from autoif_train.evaluation.instruction_following import import_registry

        self.registry: dict[str, type] = {}
        for module in REGISTRIES:
            for key, cls in import_registry(module).items():
                self.registry.setdefault(key, cls)
        self._checked: set[tuple[str, ...]] = set()

    def applies(self, row: Any) -> bool:
        return row_field(row, "instruction_id_list") is not None or row_field(row, "ground_truth") is not None

    def check(self, row: Any) -> tuple[str | None, str] | None:
        try:
            ids, _ = row_constraints(row)
        except RewardError as err:
            return err.field, err.message
        unknown = [i for i in ids if i not in self.registry]
        if unknown:
            field = "instruction_id_list" if row_field(row, "instruction_id_list") is not None else "ground_truth"
            return field, f"unknown constraint id(s) {unknown} (not in the IFEval or IFBench checkers)"
        return None

    def score(self, rows: Sequence[Any], responses: Sequence[str]) -> Scores:
        from autoif_train.evaluation.instruction_following import score_row
        from autoif_train.evaluation.nltk_resources import check_resources

        if len(rows) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
        out = Scores()
        for row, response in zip(rows, responses):
            ids, kwargs = row_constraints(row)
            key = tuple(sorted(set(ids)))
            if key not in self._checked:  # missing NLTK data is an error, never a score
                check_resources(set(ids), self.name)
                self._checked.add(key)
            bench_row = {"key": str(row_field(row, "id", "")), "prompt": prompt_text(row),
                         "instruction_id_list": ids, "kwargs": kwargs}
            strict = score_row(bench_row, response, self.registry)["strict"]
            out.results.append(list(strict))
            out.pass_rates.append(sum(strict) / len(strict))
        return out
