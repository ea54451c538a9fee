"""The project's own verifier bundle: load and validate `verifiers/`, build its derived files, cross-validate it.

Usage:
    python -m autoif_train.bundle                     # regenerate the derived files in verifiers/
    python -m autoif_train.bundle --check             # exit 1 if a derived file is missing or out of date
    python -m autoif_train.bundle --cross-validate    # also run every verifier on every case in the sandbox

Sources (hand-written): `instructions.jsonl` (one instruction, its verifier functions and test cases per line) and
`queries.jsonl` (short user queries). Derived (written by this module, deterministic, shipped):
`functions.jsonl` (every verifier as `{"id", "code"}`), `train_prompts.jsonl` and `heldout_prompts.jsonl` (online-DPO
prompt rows whose `verifiers` are ids into `functions.jsonl`). The split is by query: a fixed share of queries, chosen
by a hash of their id, is held out, and held-out queries never appear in a training row. See verifiers/README.md.

Loading only parses verifier code (`ast.parse`), it never runs it; running happens only in the sandboxed pool. Not
protected against: verifiers that are wrong in a way the test cases do not catch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoif_train.core.errors import InputError
from autoif_train.core.io import read_rows, write_text
from autoif_train.resources import bundled

DEFAULT_DIR = bundled("verifiers")
SOURCE_FILES = ("instructions.jsonl", "queries.jsonl")
DERIVED_FILES = ("functions.jsonl", "train_prompts.jsonl", "heldout_prompts.jsonl")

MIN_VERIFIERS = 2  # independent implementations per instruction
MIN_CASES = 6  # test cases per instruction, with both outcomes present
QUERY_CHARS = (20, 200)  # allowed query length, inclusive
HELDOUT_FRACTION = 0.2  # share of queries held out from training
TRAIN_ROWS_PER_INSTRUCTION = 24  # training rows per instruction (each with a different training query)
HELDOUT_ROWS_PER_INSTRUCTION = 2  # held-out rows per instruction
ID_PATTERN = re.compile(r"^[a-z0-9_]+$")
MAX_REPORTED_ERRORS = 30


class BundleError(InputError):
    """A bundle file is missing or malformed; the message names the file, line and field of every problem found."""


@dataclass(frozen=True)
class Verifier:
    id: str
    code: str


@dataclass(frozen=True)
class Case:
    input: str
    output: bool


@dataclass
class Instruction:
    id: str
    instruction: str
    category: str
    verifiers: list[Verifier]
    cases: list[Case]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    id: str
    query: str


@dataclass
class Bundle:
    instructions: list[Instruction]
    queries: list[Query]


def join_prompt(query: str, instruction: str) -> str:
    """The one user message of a prompt row: the query, a blank line, then the instruction."""
    return f"{query.strip()}\n\n{instruction.strip()}"


# ---------------------------------------------------------------- loading and validation


def _read_jsonl(path: Path, errors: list[str]) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad lines are added to `errors` as `FILE:LINE: ...`."""
    problems: list[InputError] = []
    rows = read_rows(path, error=BundleError, problems=problems)
    errors.extend(str(p) for p in problems)
    return [(row.where.line, row) for row in rows]


def _raise_if(errors: list[str]) -> None:
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise BundleError(f"{len(errors)} problem(s) in the verifier bundle:\n" + "\n".join(shown) + more)


def _code_problem(code: str) -> str | None:
    """Why `code` is not a usable verifier (`rewards.verifier_problem`, the one static check), or None. Never runs it."""
    from autoif_train.rewards import verifier_problem

    problem = verifier_problem(code)
    return problem[1] if problem else None


def _check_instruction(obj: dict, where: str, errors: list[str]) -> Instruction | None:
    start = len(errors)
    for key in ("id", "instruction", "category"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            errors.append(f"{where}: field '{key}' must be a non-empty string")
    if isinstance(obj.get("id"), str) and obj["id"] and not ID_PATTERN.match(obj["id"]):
        errors.append(f"{where}: field 'id' {obj['id']!r} must use only a-z, 0-9 and _")
    verifiers: list[Verifier] = []
    raw_verifiers = obj.get("verifiers")
    if not isinstance(raw_verifiers, list) or len(raw_verifiers) < MIN_VERIFIERS:
        errors.append(f"{where}: field 'verifiers' must be a list of at least {MIN_VERIFIERS} {{id, code}} objects")
        raw_verifiers = raw_verifiers if isinstance(raw_verifiers, list) else []
    for i, v in enumerate(raw_verifiers):
        vwhere = f"{where}: verifiers[{i}]"
        if not isinstance(v, dict) or not isinstance(v.get("id"), str) or not isinstance(v.get("code"), str):
            errors.append(f"{vwhere}: needs string fields 'id' and 'code'")
            continue
        problem = _code_problem(v["code"])
        if problem:
            errors.append(f"{vwhere} ({v['id']}): field 'code': {problem}")
        verifiers.append(Verifier(v["id"], v["code"]))
    codes = [" ".join(v.code.split()) for v in verifiers]
    if len(set(codes)) != len(codes):
        errors.append(f"{where}: field 'verifiers' holds the same code twice; implementations must differ")
    cases: list[Case] = []
    raw_cases = obj.get("cases")
    if not isinstance(raw_cases, list) or len(raw_cases) < MIN_CASES:
        errors.append(f"{where}: field 'cases' must be a list of at least {MIN_CASES} {{input, output}} objects")
        raw_cases = raw_cases if isinstance(raw_cases, list) else []
    for i, c in enumerate(raw_cases):
        if not isinstance(c, dict) or not isinstance(c.get("input"), str) or not isinstance(c.get("output"), bool):
            errors.append(f"{where}: cases[{i}]: needs 'input' (a string) and 'output' (true or false)")
            continue
        cases.append(Case(c["input"], c["output"]))
    if cases and len({c.output for c in cases}) < 2:
        errors.append(f"{where}: field 'cases' must include both true and false expected outputs")
    if len(errors) > start:
        return None
    extra = {k: v for k, v in obj.items() if k not in ("id", "instruction", "category", "verifiers", "cases")}
    return Instruction(obj["id"], obj["instruction"].strip(), obj["category"], verifiers, cases, extra)


def load_instructions(path: str | Path) -> list[Instruction]:
    """Instructions from `path`, validated; raises `BundleError` listing every problem (file, line, field)."""
    path = Path(path)
    errors: list[str] = []
    out: list[Instruction] = []
    seen_ids: dict[str, int] = {}
    seen_verifiers: dict[str, int] = {}
    for n, obj in _read_jsonl(path, errors):
        where = f"{path}:{n}"
        inst = _check_instruction(obj, where, errors)
        if inst is None:
            continue
        if inst.id in seen_ids:
            errors.append(f"{where}: field 'id': duplicate id {inst.id!r} (first on line {seen_ids[inst.id]})")
            continue
        seen_ids[inst.id] = n
        for v in inst.verifiers:
            if v.id in seen_verifiers:
                errors.append(f"{where}: verifier id {v.id!r} already used on line {seen_verifiers[v.id]}")
            seen_verifiers[v.id] = n
        out.append(inst)
    if not out and not errors:
        errors.append(f"{path}: no instructions")
    _raise_if(errors)
    return out


def load_queries(path: str | Path) -> list[Query]:
    """Queries from `path`, validated (unique ids and texts, length in QUERY_CHARS); raises `BundleError`."""
    path = Path(path)
    errors: list[str] = []
    out: list[Query] = []
    seen_ids: dict[str, int] = {}
    seen_text: dict[str, int] = {}
    lo, hi = QUERY_CHARS
    for n, obj in _read_jsonl(path, errors):
        where = f"{path}:{n}"
        qid, text = obj.get("id"), obj.get("query")
        if not isinstance(qid, str) or not qid.strip():
            errors.append(f"{where}: field 'id' must be a non-empty string")
            continue
        if not isinstance(text, str):
            errors.append(f"{where}: field 'query' must be a string")
            continue
        if not lo <= len(text.strip()) <= hi:
            errors.append(f"{where}: field 'query' is {len(text.strip())} characters; allowed {lo}..{hi}")
        key = " ".join(text.lower().split())
        if qid in seen_ids:
            errors.append(f"{where}: field 'id': duplicate id {qid!r} (first on line {seen_ids[qid]})")
        elif key in seen_text:
            errors.append(f"{where}: field 'query': duplicate of the query on line {seen_text[key]}")
        else:
            seen_ids[qid], seen_text[key] = n, n
            out.append(Query(qid, text.strip()))
    if not out and not errors:
        errors.append(f"{path}: no queries")
    _raise_if(errors)
    return out


def load_bundle(directory: str | Path = DEFAULT_DIR) -> Bundle:
    """Both source files of a bundle folder, validated."""
    directory = Path(directory)
    return Bundle(load_instructions(directory / "instructions.jsonl"), load_queries(directory / "queries.jsonl"))


# ---------------------------------------------------------------- split and derived files


def _rank(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def split_queries(queries: list[Query], heldout_fraction: float = HELDOUT_FRACTION) -> tuple[list[Query], list[Query]]:
    """(train, held-out) queries. The held-out ones are the `round(fraction * n)` queries whose id hashes lowest,
    so the split depends only on ids (not on file order), and adding queries moves at most a few existing ones."""
    n_heldout = round(heldout_fraction * len(queries))
    heldout_ids = {q.id for q in sorted(queries, key=lambda q: _rank("heldout", q.id))[:n_heldout]}
    return [q for q in queries if q.id not in heldout_ids], [q for q in queries if q.id in heldout_ids]


def _pair_rows(instructions: list[Instruction], queries: list[Query], per_instruction: int, salt: str) -> list[dict]:
    """`per_instruction` rows per instruction, each with a different query taken by rotation from a hashed order of
    `queries`; rows are interleaved round-robin over instructions, so any prefix covers the instructions evenly."""
    if per_instruction > len(queries):
        raise BundleError(f"need {per_instruction} distinct queries per instruction for {salt}, have {len(queries)}")
    order = sorted(queries, key=lambda q: _rank(salt, q.id))
    rows = []
    for k in range(per_instruction):
        for j, inst in enumerate(instructions):
            query = order[(j * per_instruction + k) % len(order)]
            rows.append(
                {
                    "id": f"{inst.id}--{query.id}",
                    "prompt": [{"role": "user", "content": join_prompt(query.query, inst.instruction)}],
                    "verifiers": [v.id for v in inst.verifiers],
                    "instruction_id": inst.id,
                    "category": inst.category,
                    "query_id": query.id,
                }
            )
    return rows


def build_derived(bundle: Bundle) -> dict[str, str]:
    """File name -> exact text of each derived file (deterministic: same sources, same bytes)."""
    train_q, heldout_q = split_queries(bundle.queries)
    functions = [{"id": v.id, "code": v.code} for inst in bundle.instructions for v in inst.verifiers]
    files = {
        "functions.jsonl": functions,
        "train_prompts.jsonl": _pair_rows(bundle.instructions, train_q, TRAIN_ROWS_PER_INSTRUCTION, "train"),
        "heldout_prompts.jsonl": _pair_rows(bundle.instructions, heldout_q, HELDOUT_ROWS_PER_INSTRUCTION, "heldout"),
    }
    return {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) for name, rows in files.items()}


def stale_files(directory: str | Path, derived: dict[str, str]) -> list[str]:
    """Names of derived files that are missing in `directory` or differ from `derived`."""
    directory = Path(directory)
    return [
        name
        for name, text in derived.items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
    ]


# ---------------------------------------------------------------- cross-validation through the sandbox


@dataclass(frozen=True)
class Mismatch:
    instruction_id: str
    verifier_id: str
    case_index: int
    expected: bool
    got: bool | None  # None: error, timeout or a non-bool result in the sandbox


def cross_validate(instructions: list[Instruction], pool) -> list[Mismatch]:
    """Run every verifier on every test case of its instruction in `pool` (an `autoif_train.sandbox.VerifierPool`);
    return each (verifier, case) whose result is not exactly the expected bool. An empty list means all agree."""
    from autoif_train.rewards import VerifierCodeReward

    keys, targets, cases = [], [], []
    for inst in instructions:
        for v in inst.verifiers:
            for i, case in enumerate(inst.cases):
                keys.append((inst.id, v.id, i, case.output))
                targets.append([v.code])
                cases.append(case.input)
    results = VerifierCodeReward(pool).score(targets, cases).results
    return [Mismatch(*key, got[0]) for key, got in zip(keys, results, strict=True) if got[0] is not key[3]]


def _run_cross_validation(instructions: list[Instruction], workers: int, timeout: float, isolation: str) -> int:
    from autoif_train.sandbox import VerifierPool

    n_calls = sum(len(inst.verifiers) * len(inst.cases) for inst in instructions)
    with VerifierPool(workers=workers, timeout=timeout, isolation=isolation) as pool:
        mismatches = cross_validate(instructions, pool)
    by_id = {inst.id: inst for inst in instructions}
    for m in mismatches:
        case_input = by_id[m.instruction_id].cases[m.case_index].input
        print(
            f"MISMATCH {m.verifier_id} on cases[{m.case_index}] {case_input[:60]!r}: expected {m.expected}, got {m.got}",
            file=sys.stderr,
        )
    print(f"cross-validation: {n_calls - len(mismatches)}/{n_calls} verifier-case results as expected")
    return 1 if mismatches else 0


# ---------------------------------------------------------------- entry point


def main(
    directory: str | Path = DEFAULT_DIR,
    check: bool = False,
    run_cross_validation: bool = False,
    workers: int = 2,
    timeout: float = 1.0,
    isolation: str = "seccomp",
) -> int:
    """Validate the bundle in `directory`, then write (or with `check`, compare) its derived files. Returns an exit
    code: 0 when up to date / written and (if asked) cross-validated, 1 otherwise. Invalid sources raise
    `BundleError` before anything is written, so existing derived files are never lost to a bad edit."""
    directory = Path(directory)
    bundle = load_bundle(directory)
    derived = build_derived(bundle)
    stale = stale_files(directory, derived)
    status = 0
    if check:
        for name in stale:
            print(
                f"{directory / name} is missing or out of date; run `python -m autoif_train.bundle`", file=sys.stderr
            )
        status = 1 if stale else 0
    else:
        for name in stale:
            write_text(directory / name, derived[name])
            print(f"wrote {directory / name}")
    if run_cross_validation:
        status = max(status, _run_cross_validation(bundle.instructions, workers, timeout, isolation))
    n_train = derived["train_prompts.jsonl"].count("\n")
    n_heldout = derived["heldout_prompts.jsonl"].count("\n")
    print(
        f"bundle: {len(bundle.instructions)} instructions, "
        f"{sum(len(i.verifiers) for i in bundle.instructions)} verifiers, {len(bundle.queries)} queries, "
        f"{n_train} training prompts, {n_heldout} held-out prompts" + (" (up to date)" if not stale else "")
    )
    return status


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoif_train.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="bundle folder (default: the project's verifiers/)")
    parser.add_argument("--check", action="store_true", help="only check that the derived files are up to date")
    parser.add_argument("--cross-validate", action="store_true", help="run every verifier on its cases (sandboxed)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers for --cross-validate")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per verifier call for --cross-validate")
    parser.add_argument("--isolation", default="seccomp", help="sandbox isolation: seccomp | bwrap | none")
    args = parser.parse_args(argv)
    try:
        return main(args.dir, args.check, args.cross_validate, args.workers, args.timeout, args.isolation)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
