"""How verifier outcomes become scores: the result semantics shared by every AutoIF stage.

A call `evaluate(response)` counts only when it returns a bool, or one of the strings "true" / "false" (any case,
surrounding whitespace ignored; LLM-written verifiers often return them). An exception, a timeout, a crash of the
worker or any other return value (None, 1, "yes", a list, ...) is None. The pass rate of a response is the mean
over its verifiers that returned a bool; when none did (or it has no verifiers) it is 0.0, as in AutoIF's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from autoif_train.sandbox.pool import VerifierPool

Result = bool | None


def coerce_result(value: object) -> Result:
    """Map a verifier's return value to True / False / None (see the module docstring)."""
    if type(value) is bool:
        return value
    if type(value) is str and len(value) <= 32:
        text = value.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
    return None


def pass_rate(results: Sequence[Result]) -> float:
    """Mean over the bools in `results`; None entries are ignored; all None (or empty) -> 0.0."""
    bools = [r for r in results if r is not None]
    return sum(bools) / len(bools) if bools else 0.0


def score_responses(
    pool: VerifierPool, items: Sequence[tuple[str, Sequence[str]]], progress: bool = False
) -> list[tuple[list[Result], float]]:
    """Score many responses at once: `items` = (response, [verifier code, ...]) -> (results, pass rate) per item.

    All calls go to the pool in one `run`, so they are batched across items.
    """
    calls = [(code, response) for response, codes in items for code in codes]
    flat = pool.run(calls, progress=progress)
    out, pos = [], 0
    for _, codes in items:
        results = flat[pos : pos + len(codes)]
        pos += len(codes)
        out.append((results, pass_rate(results)))
    return out
