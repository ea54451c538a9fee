"""The project's own verifier bundle: load and validate `verifiers/`, build its derived files, cross-validate it.

Usage:
    autoif bundle                     # regenerate the derived files in verifiers/
    autoif bundle --check             # exit 1 if a derived file is missing or out of date
    autoif bundle --cross-validate    # also run every verifier on every case in the sandbox
    python -m autoif_train.bundle --check --dir path/to/verifiers

Exit code: 0 up to date (or written) and cross-validated, 1 a stale derived file with `--check` or a verifier that
disagrees with a case, 2 a bad source file: one line, `autoif bundle: error: FILE:LINE: field 'x': ...`, that also
lists the other problems found.

Sources (hand-written): `instructions.jsonl` (one instruction, its verifier functions and test cases per line) and
`queries.jsonl` (short user queries). Derived (written by this module, deterministic, shipped):
`functions.jsonl` (every verifier as `{"id", "code"}`) and online-DPO prompt rows whose `verifiers` are ids into it:
`train_prompts.jsonl`, `train_prompts_multi.jsonl` (every second row combines 2-3 instructions, as IFEval's prompts
do), `heldout_prompts.jsonl` (in distribution) and `heldout_ood_prompts.jsonl` (out of distribution). The split is
two-way, each by a hash of ids: a fixed share of queries is held out (held-out queries never appear in a training
row), and a fixed share of each category's instructions is held out entirely (never in a training row, with any
query), so held-out prompts measure both unseen queries and unseen instruction types. See verifiers/README.md.

Loading only parses verifier code (`ast.parse`), it never runs it; running happens only in the sandboxed pool. Not
protected against: verifiers that are wrong in a way the test cases do not catch.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoif_train.core.errors import InputError, run_command
from autoif_train.core.io import Row, read_rows, write_text
from autoif_train.core.recipes import ArgumentParser, positive
from autoif_train.resources import bundled

DEFAULT_DIR = bundled("verifiers")
SOURCE_FILES = ("instructions.jsonl", "queries.jsonl")
DERIVED_FILES = ("functions.jsonl", "train_prompts.jsonl", "train_prompts_multi.jsonl", "heldout_prompts.jsonl",
                 "heldout_ood_prompts.jsonl")

MIN_VERIFIERS = 2  # independent implementations per instruction
MIN_CASES = 6  # test cases per instruction, with both outcomes present
QUERY_CHARS = (20, 200)  # allowed query length, inclusive
HELDOUT_FRACTION = 0.2  # share of queries held out from training
TRAIN_ROWS_PER_INSTRUCTION = 24  # training rows per instruction (each with a different training query)
HELDOUT_ROWS_PER_INSTRUCTION = 2  # held-out rows per trained instruction (in distribution)
OOD_FRACTION = 0.2  # share of each category's instructions never trained on (at least 1 of a category of 2 or more)
OOD_ROWS_PER_INSTRUCTION = 4  # held-out rows per held-out instruction (out of distribution)
# Multi-instruction rows combine instructions of different categories, never a SOLO one nor two of one CONFLICTS
# group (they compete for the same place or forbid what the other needs). Combinations this misses pull against
# each other harder; a combination no response can satisfy only gives no pair.
SOLO = frozenset({"max_words_5", "single_line", "wrap_in_quotes", "json_object", "lowercase_only", "uppercase_only"})
CONFLICTS = (
    {"start_with_certainly", "start_with_here_is", "start_with_dear_friend", "markdown_heading"},  # the first words
    {"end_with_question", "end_with_period", "end_with_hope_this_helps", "last_word_goodbye", "postscript",
     "sign_off_name", "two_hashtags"},  # the last words
    {"no_markdown", "markdown_heading", "two_bold_phrases", "code_block", "two_hashtags"},  # markdown or none
    {"three_bullets", "numbered_list", "markdown_table", "two_paragraphs", "part_labels", "qa_lines", "code_block",
     "exactly_three_sentences", "max_sentences_2", "min_sentences_4"},  # the reply's layout
    {"no_digits", "numbered_list"}, {"no_commas", "start_with_dear_friend"},
    {"no_colons_semicolons", "start_with_here_is", "qa_lines", "part_labels"},
)
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

KINDS = {str: "a string", bool: "true or false"}  # how a case's or a verifier's field types are named


def _raise_if(problems: list[InputError]) -> None:
    """Raise one `BundleError` at the first problem by line; its message also lists the others (up to a limit), on
    the same line."""
    if not problems:
        return
    problems = sorted(problems, key=lambda p: (p.path or "", p.line or 0))
    first, rest = problems[0], [str(p) for p in problems[1:MAX_REPORTED_ERRORS]]
    more = len(problems) - 1 - len(rest)
    if rest:
        listed = "; ".join(rest) + (f"; and {more} more" if more else "")
        message = f"{first.message} (+{len(problems) - 1} more problem(s): {listed})"
    else:
        message = first.message
    raise BundleError(first.path, first.line, first.field, message)


def _code_problem(code: str) -> str | None:
    """Why `code` is not a usable verifier (`rewards.verifier_problem`, the one static check), or None. Never runs it."""
    from autoif_train.rewards import verifier_problem

    problem = verifier_problem(code)
    return problem[1] if problem else None


def _entries(row: Row, key: str, minimum: int, types: dict[str, type],
             problems: list[InputError]) -> list[tuple[int, dict]]:
    """(index, entry) for the entries of the list `row[key]` that are objects with fields of `types`; a list shorter
    than `minimum` or a malformed entry is a problem."""
    raw = row.get(key)
    if not isinstance(raw, list) or len(raw) < minimum:
        problems.append(row.where.error(key, f"must be a list of at least {minimum} {{{', '.join(types)}}} objects"))
        raw = raw if isinstance(raw, list) else []
    good = []
    for i, entry in enumerate(raw):
        if isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in types.items()):
            good.append((i, entry))
        else:
            needs = " and ".join(f"{k!r} ({KINDS[t]})" for k, t in types.items())
            problems.append(row.where.error(f"{key}[{i}]", f"needs {needs}"))
    return good


def _check_instruction(row: Row, problems: list[InputError]) -> Instruction | None:
    start = len(problems)
    for key in ("id", "instruction", "category"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            problems.append(row.where.error(key, "must be a non-empty string"))
    if isinstance(row.get("id"), str) and row["id"] and not ID_PATTERN.match(row["id"]):
        problems.append(row.where.error("id", f"{row['id']!r} must use only a-z, 0-9 and _"))
    verifiers = []
    for i, v in _entries(row, "verifiers", MIN_VERIFIERS, {"id": str, "code": str}, problems):
        problem = _code_problem(v["code"])
        if problem:
            problems.append(row.where.error(f"verifiers[{i}].code", f"verifier {v['id']!r}: {problem}"))
        verifiers.append(Verifier(v["id"], v["code"]))
    codes = [" ".join(v.code.split()) for v in verifiers]
    if len(set(codes)) != len(codes):
        problems.append(row.where.error("verifiers", "holds the same code twice; implementations must differ"))
    cases = [Case(c["input"], c["output"])
             for _, c in _entries(row, "cases", MIN_CASES, {"input": str, "output": bool}, problems)]
    if cases and len({c.output for c in cases}) < 2:
        problems.append(row.where.error("cases", "must include both true and false expected outputs"))
    if len(problems) > start:
        return None
    extra = {k: v for k, v in row.items() if k not in ("id", "instruction", "category", "verifiers", "cases")}
    return Instruction(row["id"], row["instruction"].strip(), row["category"], verifiers, cases, extra)


def load_instructions(path: str | Path) -> list[Instruction]:
    """Instructions from `path`, validated; raises `BundleError` at the first problem (file, line, field), naming
    the others too."""
    path = Path(path)
    problems: list[InputError] = []
    out: list[Instruction] = []
    seen_ids: dict[str, int] = {}
    seen_verifiers: dict[str, int] = {}
    for row in read_rows(path, error=BundleError, problems=problems):  # bad lines: problems
        inst = _check_instruction(row, problems)
        if inst is None:
            continue
        if inst.id in seen_ids:
            problems.append(row.where.error("id", f"duplicate id {inst.id!r} (first on line {seen_ids[inst.id]})"))
            continue
        seen_ids[inst.id] = row.where.line
        for i, v in enumerate(inst.verifiers):
            if v.id in seen_verifiers:
                problems.append(row.where.error(f"verifiers[{i}].id",
                                                f"{v.id!r} already used on line {seen_verifiers[v.id]}"))
            seen_verifiers[v.id] = row.where.line
        out.append(inst)
    if not out and not problems:
        problems.append(BundleError(path, None, None, "no instructions"))
    _raise_if(problems)
    return out


def load_queries(path: str | Path) -> list[Query]:
    """Queries from `path`, validated (unique ids and texts, length in QUERY_CHARS); raises `BundleError`."""
    path = Path(path)
    problems: list[InputError] = []
    out: list[Query] = []
    seen_ids: dict[str, int] = {}
    seen_text: dict[str, int] = {}
    lo, hi = QUERY_CHARS
    for row in read_rows(path, error=BundleError, problems=problems):  # bad lines: problems
        qid, text, n = row.get("id"), row.get("query"), row.where.line
        if not isinstance(qid, str) or not qid.strip():
            problems.append(row.where.error("id", "must be a non-empty string"))
            continue
        if not isinstance(text, str):
            problems.append(row.where.error("query", "must be a string"))
            continue
        if not lo <= len(text.strip()) <= hi:
            problems.append(row.where.error("query", f"{len(text.strip())} characters; allowed {lo}..{hi}"))
        key = " ".join(text.lower().split())
        if qid in seen_ids:
            problems.append(row.where.error("id", f"duplicate id {qid!r} (first on line {seen_ids[qid]})"))
        elif key in seen_text:
            problems.append(row.where.error("query", f"duplicate of the query on line {seen_text[key]}"))
        else:
            seen_ids[qid], seen_text[key] = n, n
            out.append(Query(qid, text.strip()))
    if not out and not problems:
        problems.append(BundleError(path, None, None, "no queries"))
    _raise_if(problems)
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


def split_instructions(instructions: list[Instruction], fraction: float = OOD_FRACTION
                       ) -> tuple[list[Instruction], list[Instruction]]:
    """(trained, held-out) instructions, in file order. Per category, the `round(fraction * n)` (at least 1 when the
    category has 2 or more) instructions whose id hashes lowest are held out: every category is in both parts."""
    by_category: dict[str, list[Instruction]] = {}
    for inst in instructions:
        by_category.setdefault(inst.category, []).append(inst)
    heldout_ids: set[str] = set()
    for group in by_category.values():
        n = max(1, round(fraction * len(group))) if len(group) >= 2 else 0
        heldout_ids |= {i.id for i in sorted(group, key=lambda i: _rank("ood", i.id))[:n]}
    return [i for i in instructions if i.id not in heldout_ids], [i for i in instructions if i.id in heldout_ids]


def combinable(a: Instruction, b: Instruction) -> bool:
    """Whether a multi-instruction row may carry both: different categories, neither SOLO, no shared CONFLICTS group."""
    if a.category == b.category or a.id in SOLO or b.id in SOLO:
        return False
    return not any(a.id in group and b.id in group for group in CONFLICTS)


def _row(insts: list[Instruction], query: Query) -> dict:
    """One prompt row: the query, then the instructions; its verifiers are all of theirs (the pass rate is the mean
    over them, so 1.0 means every instruction was followed)."""
    row = {
        "id": "+".join(i.id for i in insts) + f"--{query.id}",
        "prompt": [{"role": "user", "content": join_prompt(query.query, " ".join(i.instruction for i in insts))}],
        "verifiers": [v.id for i in insts for v in i.verifiers],
        "instruction_id": "+".join(i.id for i in insts),
        "category": insts[0].category if len(insts) == 1 else "multi",
        "query_id": query.id,
    }
    if len(insts) > 1:
        row["instruction_ids"] = [i.id for i in insts]
    return row


def _multi_rows(instructions: list[Instruction], queries: list[Query], n_rows: int, salt: str) -> list[dict]:
    """`n_rows` rows of 2 or 3 combinable instructions (2, 2, 3, 2, 2, 3, ...), combinations and queries drawn by a
    generator seeded with `salt` over id-sorted inputs: deterministic, and independent of file order."""
    import random

    insts = sorted(instructions, key=lambda i: i.id)
    pairs = [(a, b) for n, a in enumerate(insts) for b in insts[n + 1:] if combinable(a, b)]
    triples = [(a, b, c) for a, b in pairs for c in insts if c.id > b.id and combinable(a, c) and combinable(b, c)]
    if not pairs:
        raise BundleError(f"no two instructions can be combined for {salt}")
    rng = random.Random(salt)
    order = sorted(queries, key=lambda q: _rank(salt, q.id))
    rows = []
    for k in range(n_rows):
        combo = list(rng.choice(triples if k % 3 == 2 and triples else pairs))
        rng.shuffle(combo)
        rows.append(_row(combo, order[k % len(order)]))
    return rows


def _pair_rows(instructions: list[Instruction], queries: list[Query], per_instruction: int, salt: str) -> list[dict]:
    """`per_instruction` rows per instruction, each with a different query taken by rotation from a hashed order of
    `queries`; rows are interleaved round-robin over instructions, so any prefix covers the instructions evenly."""
    if per_instruction > len(queries):
        raise BundleError(f"need {per_instruction} distinct queries per instruction for {salt}, have {len(queries)}")
    order = sorted(queries, key=lambda q: _rank(salt, q.id))
    rows = []
    for k in range(per_instruction):
        for j, inst in enumerate(instructions):
            rows.append(_row([inst], order[(j * per_instruction + k) % len(order)]))
    return rows


def build_derived(bundle: Bundle) -> dict[str, str]:
    """File name -> exact text of each derived file (deterministic: same sources, same bytes)."""
    train_q, heldout_q = split_queries(bundle.queries)
    trained, ood = split_instructions(bundle.instructions)
    functions = [{"id": v.id, "code": v.code} for inst in bundle.instructions for v in inst.verifiers]
    train = _pair_rows(trained, train_q, TRAIN_ROWS_PER_INSTRUCTION, "train")
    multi = _multi_rows(trained, train_q, len(train) // 2, "multi")
    files = {
        "functions.jsonl": functions,
        "train_prompts.jsonl": train,
        # single and multi-instruction rows alternate, so any prefix holds both halves
        "train_prompts_multi.jsonl": [row for pair in zip(train, multi) for row in pair],
        "heldout_prompts.jsonl": _pair_rows(trained, heldout_q, HELDOUT_ROWS_PER_INSTRUCTION, "heldout"),
        "heldout_ood_prompts.jsonl": _pair_rows(ood, heldout_q, OOD_ROWS_PER_INSTRUCTION, "heldout_ood"),
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
    """Validate the bundle in `directory`, then write (or with `check`, compare) its derived files. Returns the exit
    code: 0 when up to date / written and (if asked) cross-validated, 1 otherwise. Invalid sources raise
    `BundleError` before anything is written, so existing derived files are never lost to a bad edit."""
    # ----- Load and validate the sources
    directory = Path(directory)
    bundle = load_bundle(directory)

    # ----- Build the derived files; write them, or only compare with --check
    derived = build_derived(bundle)
    stale = stale_files(directory, derived)
    status = 0
    if check:
        for name in stale:
            print(f"{directory / name} is missing or out of date; run `autoif bundle`", file=sys.stderr)
        status = 1 if stale else 0
    else:
        for name in stale:
            write_text(directory / name, derived[name])
            print(f"wrote {directory / name}")

    # ----- Cross-validate in the sandbox
    if run_cross_validation:
        status = max(status, _run_cross_validation(bundle.instructions, workers, timeout, isolation))
    n = {name: derived[name].count("\n") for name in DERIVED_FILES}
    n_ood = len(split_instructions(bundle.instructions)[1])
    print(
        f"bundle: {len(bundle.instructions)} instructions ({n_ood} never trained on), "
        f"{sum(len(i.verifiers) for i in bundle.instructions)} verifiers, {len(bundle.queries)} queries, "
        f"{n['train_prompts.jsonl']} training prompts ({n['train_prompts_multi.jsonl']} in the multi-instruction "
        f"set), {n['heldout_prompts.jsonl']} held-out prompts in distribution and "
        f"{n['heldout_ood_prompts.jsonl']} out of it" + (" (up to date)" if not stale else "")
    )
    return status


def cli(argv: list[str] | None = None) -> int:
    from autoif_train.sandbox.lockdown import ISOLATION_MODES

    parser = ArgumentParser(prog="autoif bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="bundle folder (default: the project's verifiers/)")
    parser.add_argument("--check", action="store_true", help="only check that the derived files are up to date")
    parser.add_argument("--cross-validate", action="store_true", help="run every verifier on its cases (sandboxed)")
    parser.add_argument("--workers", type=positive(int), default=2, help="sandbox workers for --cross-validate")
    parser.add_argument("--timeout", type=positive(float), default=1.0,
                        help="seconds per verifier call for --cross-validate")
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="seccomp",
                        help="sandbox isolation for --cross-validate: seccomp | bwrap | none")

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return main(args.dir, args.check, args.cross_validate, args.workers, args.timeout, args.isolation)

    return run_command("autoif bundle", run, argv)


if __name__ == "__main__":
    sys.exit(cli())
