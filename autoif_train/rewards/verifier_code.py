"""`verifier_code`: LLM-written `evaluate(response) -> bool` functions, run only in the sandboxed `VerifierPool`.

A row's verifiers are Python sources (`row.verifiers`, a mapping's `"verifiers"`, or the row itself when it is a
list of sources). Every (verifier, response) call of one `score` goes to the pool in one `run`, batched across
rows. A call's result follows `sandbox.scoring.coerce_result` (a bool, or None for an error, a timeout, a crash or
any other value); a response's pass rate is the mean over its verifiers that returned a bool, None when none did.

`verifier_problem` is the one static check of what a verifier is: Python that parses and compiles and defines a
top-level `evaluate` callable with one argument. It only parses (`ast.parse` + `compile`), never runs the code, so
it says nothing about what the code does: that is the sandbox's job.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from autoif_train.rewards.base import Reward, Scores, pass_rate, row_field


def is_verifier_code(text: str) -> bool:
    """Whether a `verifiers` entry is source code (it mentions `def evaluate`) rather than a bundle id."""
    return "def evaluate" in text


def verifier_problem(code: str) -> tuple[str, str] | None:
    """(kind, message) when `code` is not a usable verifier, else None. Kinds: syntax_error, no_evaluate,
    bad_signature. Never executes `code`."""
    try:
        tree = ast.parse(code)
        compile(tree, "<verifier>", "exec")
    except SyntaxError as err:
        return "syntax_error", f"syntax error at code line {err.lineno}: {err.msg}"
    except (ValueError, MemoryError, RecursionError, OverflowError) as err:
        return "syntax_error", f"does not compile: {type(err).__name__}"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "evaluate":
            args = node.args
            positional = args.posonlyargs + args.args
            required = len(positional) - len(args.defaults)
            kw_required = sum(d is None for d in args.kw_defaults)
            if kw_required or required > 1 or (not positional and args.vararg is None):
                return "bad_signature", "evaluate must be callable with one argument (the response)"
            return None
    return "no_evaluate", "defines no top-level function evaluate(response)"


def row_verifiers(row: Any) -> list[str] | None:
    """The verifier sources a row carries, or None when it carries none."""
    if isinstance(row, (list, tuple)):
        return list(row)
    codes = row_field(row, "verifiers")
    return list(codes) if codes else None


class VerifierCodeReward(Reward):
    """Score responses with their rows' verifier code in `pool` (a `VerifierPool`; built and owned when None)."""

    name = "verifier_code"

    def __init__(self, pool=None, workers: int = 2, timeout: float = 1.0, isolation: str = "seccomp",
                 progress: bool = False):
        self._pool, self._owned = pool, pool is None
        self._settings = {"workers": workers, "timeout": timeout, "isolation": isolation}
        self.progress = progress

    @property
    def pool(self):
        if self._pool is None:
            from autoif_train.sandbox import VerifierPool

            self._pool = VerifierPool(**self._settings)
        return self._pool

    def applies(self, row: Any) -> bool:
        return bool(row_verifiers(row))

    def check(self, row: Any) -> tuple[str | None, str] | None:
        codes = row_verifiers(row)
        if not codes or not all(isinstance(c, str) for c in codes):
            return "verifiers", "must be a non-empty list of verifier code strings"
        return None

    def score(self, rows: Sequence[Any], responses: Sequence[str]) -> Scores:
        if len(rows) != len(responses):
            raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
        per_row = [row_verifiers(row) or [] for row in rows]
        calls = [(code, response) for codes, response in zip(per_row, responses) for code in codes]
        flat = self.pool.run(calls, progress=self.progress) if calls else []
        out, pos = Scores(), 0
        for codes in per_row:
            results = list(flat[pos : pos + len(codes)])
            pos += len(codes)
            out.results.append(results)
            out.pass_rates.append(pass_rate(results))
        return out

    def close(self) -> None:
        if self._owned and self._pool is not None:
            self._pool.close()
            self._pool = None
