"""What one verifier call returns: the result semantics shared by every AutoIF stage.

A call `evaluate(response)` counts only when it returns a bool, or one of the strings "true" / "false" (any case,
surrounding whitespace ignored; LLM-written verifiers often return them). An exception, a timeout, a crash of the
worker or any other return value (None, 1, "yes", a list, ...) is None. How results become pass rates is
`autoif_train.rewards` (the one scoring path).
"""

from __future__ import annotations

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
