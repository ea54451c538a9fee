"""Score responses with verifier functions, run in the sandboxed verifier pool (never in this process).

Usage:
    autoif verify --verifiers V.jsonl --responses R.jsonl --out O.jsonl [--workers 2] [--timeout 1.0] \
        [--isolation seccomp|bwrap|none]

V.jsonl lines: {"id": str, "code": str}   (code defines `evaluate(response)`; e.g. verifiers/functions.jsonl)
R.jsonl lines: {"id": str, "response": str, "verifiers": [verifier id, ...]}
               (an entry of "verifiers" that is not a known id but contains `def evaluate` is used as code)
O.jsonl lines: {"id": str, "results": [true | false | null, ...], "pass_rate": float}, in input order.

A result is true/false when `evaluate` returned a bool (or "true"/"false"), null on an exception, a timeout, a
crash or any other value; pass_rate is the mean over the non-null results, 0.0 when all are null (scoring is the
one path, `autoif_train.rewards.VerifierCodeReward`). All input is checked before anything runs (an error names
file, line and field); the output appears only when complete.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from autoif_train.core.errors import InputError, run_command
from autoif_train.core.io import atomic_path, read_rows
from autoif_train.core.recipes import ArgumentParser, positive
from autoif_train.data.rows import load_verifier_bundle
from autoif_train.rewards import VerifierCodeReward, is_verifier_code
from autoif_train.sandbox import ISOLATION_MODES, VerifierPool, code_hash


def load_inputs(verifiers_path: Path, responses_path: Path) -> tuple[list[dict], list[list[str]]]:
    """Validate both files; returns the response rows and, per row, the verifier codes to run."""
    codes = load_verifier_bundle(str(verifiers_path))
    rows = read_rows(responses_path, {"id": str, "response": str, "verifiers": list})
    per_row = []
    for row in rows:
        resolved = []
        for j, ref in enumerate(row["verifiers"]):
            if isinstance(ref, str) and ref in codes:
                resolved.append(codes[ref])
            elif isinstance(ref, str) and is_verifier_code(ref):
                resolved.append(ref)
            else:
                raise row.where.error(f"verifiers[{j}]", f"unknown verifier id {ref!r} (not in {verifiers_path})")
        per_row.append(resolved)
    return rows, per_row


def main(
    verifiers: str | Path,
    responses: str | Path,
    out: str | Path,
    workers: int = 2,
    timeout: float = 1.0,
    isolation: str = "seccomp",
    progress: bool = True,
) -> dict:
    """Score every response; write O.jsonl atomically; return a summary (rows, calls, mean pass rate, disabled)."""
    out = check_out_path(out)  # before scoring: a bad --out must not throw the finished scores away
    rows, per_row = load_inputs(Path(verifiers), Path(responses))
    with VerifierPool(workers=workers, timeout=timeout, isolation=isolation) as pool:
        scores = VerifierCodeReward(pool, progress=progress).score(per_row, [row["response"] for row in rows])
        disabled = dict(pool.disabled)
    rates = scores.rates(0.0)
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row, results, rate in zip(rows, scores.results, rates):
            f.write(json.dumps({"id": row["id"], "results": results, "pass_rate": rate}) + "\n")
    names = {code_hash(c): ref for row, codes in zip(rows, per_row) for ref, c in zip(row["verifiers"], codes)}
    return {
        "rows": len(rows),
        "calls": sum(len(codes) for codes in per_row),
        "mean_pass_rate": sum(rates) / len(rates) if rates else 0.0,
        "disabled_verifiers": sorted(str(names.get(k, k))[:80] for k in disabled),
        "out": str(out),
    }


def check_out_path(out: str | Path) -> Path:
    """`out` as a Path, after checking it can be written as a file (not a folder; its folder exists or can be made)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(out, None, "out", "is a folder; give the output file, e.g. OUT/scores.jsonl")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(out, None, "out", f"cannot be written ({parent} is not a writable folder)")
    return out


def cli(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="autoif verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifiers", required=True, help="JSONL of {id, code}")
    parser.add_argument("--responses", required=True, help="JSONL of {id, response, verifiers: [ids]}")
    parser.add_argument("--out", required=True, help="output JSONL of {id, results, pass_rate}")
    parser.add_argument("--workers", type=positive(int), default=2, help="sandbox worker processes (default 2)")
    parser.add_argument("--timeout", type=positive(float), default=1.0, help="seconds per verifier call (default 1.0)")
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="seccomp",
                        help="seccomp (default), bwrap, or none (rlimits only: explicit opt-out)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        summary = main(args.verifiers, args.responses, args.out, args.workers, args.timeout, args.isolation,
                       progress=not args.no_progress)  # fmt: skip
        print(json.dumps(summary))
        if summary["disabled_verifiers"]:
            print(f"autoif verify: disabled after repeated timeouts/crashes: {summary['disabled_verifiers']}",
                  file=sys.stderr)  # fmt: skip
        return 0

    return run_command("autoif verify", run, argv)


if __name__ == "__main__":
    sys.exit(cli())
