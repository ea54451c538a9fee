"""The project's verifier bundle: every verifier agrees with every test case in the sandbox, the split keeps held-out
queries out of training, derived files are up to date, and bad sources fail with file, line and field.

    python -m pytest tests/test_bundle.py -q
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from autoif_train import bundle as B

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "verifiers"


@pytest.fixture(scope="module")
def project_bundle() -> B.Bundle:
    return B.load_bundle(BUNDLE_DIR)


@pytest.fixture(scope="module")
def pool():
    from autoif_train.sandbox import VerifierPool

    with VerifierPool(workers=2, timeout=1.0, isolation="seccomp") as p:
        yield p


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the bundle itself


def test_bundle_meets_the_issue_minimums(project_bundle):
    insts = project_bundle.instructions
    assert len(insts) >= 40
    assert len({i.instruction for i in insts}) == len(insts)
    for inst in insts:
        assert len(inst.verifiers) >= 2, inst.id
        assert len({" ".join(v.code.split()) for v in inst.verifiers}) == len(inst.verifiers), inst.id
        assert len(inst.cases) >= 6, inst.id
        assert {c.output for c in inst.cases} == {True, False}, inst.id
    assert len({i.category for i in insts}) >= 6


def test_every_verifier_agrees_with_every_case_in_the_sandbox(project_bundle, pool):
    mismatches = B.cross_validate(project_bundle.instructions, pool)
    assert mismatches == []


def test_cross_validation_reports_a_wrong_case_and_a_broken_verifier(project_bundle, pool):
    inst = project_bundle.instructions[0]
    flipped = B.Case(inst.cases[0].input, not inst.cases[0].output)
    crashing = B.Verifier(f"{inst.id}/broken", "def evaluate(response):\n    return undefined_name\n")
    bad = B.Instruction(inst.id, inst.instruction, inst.category, [*inst.verifiers, crashing], [flipped])
    mismatches = B.cross_validate([bad], pool)
    got = {(m.verifier_id, m.got) for m in mismatches}
    assert {(v.id, inst.cases[0].output) for v in inst.verifiers} <= got
    assert (crashing.id, None) in got


def test_queries_are_many_short_and_distinct(project_bundle):
    queries = project_bundle.queries
    assert len(queries) >= 300
    assert all(20 <= len(q.query) <= 200 for q in queries)
    assert len({" ".join(q.query.lower().split()) for q in queries}) == len(queries)
    first_words = Counter(q.query.split()[0].lower() for q in queries)
    assert first_words.most_common(1)[0][1] < 0.5 * len(queries)


def test_no_8gram_shared_with_ifeval_prompts(project_bundle, ifeval_path):
    def grams(text: str, n: int = 8) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    ifeval = set().union(*(grams(row["prompt"]) for row in _read_jsonl(ifeval_path)))
    ours = [i.instruction for i in project_bundle.instructions] + [q.query for q in project_bundle.queries]
    assert [t for t in ours if grams(t) & ifeval] == []


# ---------------------------------------------------------------- split and derived files


def test_derived_files_are_up_to_date(project_bundle):
    assert B.stale_files(BUNDLE_DIR, B.build_derived(project_bundle)) == []


def test_split_keeps_heldout_queries_out_of_training(project_bundle):
    train = _read_jsonl(BUNDLE_DIR / "train_prompts.jsonl") + _read_jsonl(BUNDLE_DIR / "train_prompts_multi.jsonl")
    heldout = _read_jsonl(BUNDLE_DIR / "heldout_prompts.jsonl")
    ood = _read_jsonl(BUNDLE_DIR / "heldout_ood_prompts.jsonl")
    train_q, heldout_q = B.split_queries(project_bundle.queries)
    assert len(heldout_q) == round(0.2 * len(project_bundle.queries))
    assert {r["query_id"] for r in train} <= {q.id for q in train_q}
    assert {r["query_id"] for r in heldout + ood} <= {q.id for q in heldout_q}
    heldout_texts = {q.query for q in heldout_q}
    assert not any(text in r["prompt"][0]["content"] for r in train for text in heldout_texts)
    assert len(heldout) == 2 * 44 and len(ood) == 4 * 11
    trained, never = B.split_instructions(project_bundle.instructions)
    assert {r["instruction_id"] for r in heldout} == {i.id for i in trained}
    assert {r["instruction_id"] for r in ood} == {i.id for i in never}
    single = _read_jsonl(BUNDLE_DIR / "train_prompts.jsonl")
    assert {r["instruction_id"] for r in single} == {i.id for i in trained}
    assert len({r["id"] for r in single + heldout + ood}) == len(single) + len(heldout) + len(ood)


def test_instruction_types_held_out_never_appear_in_any_training_row(project_bundle):
    trained, never = B.split_instructions(project_bundle.instructions)
    assert len(never) == 11 and len(trained) + len(never) == len(project_bundle.instructions)
    categories = {i.category for i in project_bundle.instructions}
    assert {i.category for i in never} == {i.category for i in trained} == categories  # every category in both
    never_ids = {i.id for i in never}
    never_texts = {i.instruction for i in never}
    never_verifiers = {v.id for i in never for v in i.verifiers}
    for name in ("train_prompts.jsonl", "train_prompts_multi.jsonl"):
        for row in _read_jsonl(BUNDLE_DIR / name):
            assert not set(row.get("instruction_ids", [row["instruction_id"]])) & never_ids
            assert not set(row["verifiers"]) & never_verifiers
            assert not any(text in row["prompt"][0]["content"] for text in never_texts)
    # the choice depends on ids only: file order does not move it
    _, never_reversed = B.split_instructions(list(reversed(project_bundle.instructions)))
    assert {i.id for i in never_reversed} == never_ids


def test_multi_instruction_rows_combine_compatible_instructions_and_all_their_verifiers(project_bundle):
    insts = {i.id: i for i in project_bundle.instructions}
    queries = {q.id: q for q in project_bundle.queries}
    rows = _read_jsonl(BUNDLE_DIR / "train_prompts_multi.jsonl")
    single = _read_jsonl(BUNDLE_DIR / "train_prompts.jsonl")
    assert rows[0::2] == single[: len(rows) // 2]  # single and multi rows alternate
    multi = rows[1::2]
    assert [len(r["instruction_ids"]) for r in multi[:6]] == [2, 2, 3, 2, 2, 3]
    for row in multi:
        parts = [insts[i] for i in row["instruction_ids"]]
        assert all(B.combinable(a, b) for n, a in enumerate(parts) for b in parts[n + 1:])
        assert len({p.category for p in parts}) == len(parts) and row["category"] == "multi"
        assert row["verifiers"] == [v.id for p in parts for v in p.verifiers]
        text = B.join_prompt(queries[row["query_id"]].query, " ".join(p.instruction for p in parts))
        assert row["prompt"] == [{"role": "user", "content": text}]
    assert len({r["instruction_id"] for r in multi}) > len(multi) // 2  # many different combinations
    a, b = insts["lowercase_only"], insts["no_commas"]
    assert not B.combinable(a, b)  # SOLO
    assert not B.combinable(insts["start_with_certainly"], insts["markdown_heading"])  # both want the first words
    assert B.combinable(insts["no_commas"], insts["include_sunshine"])


def test_rows_join_query_and_instruction_and_reference_known_functions(project_bundle):
    functions = {f["id"] for f in _read_jsonl(BUNDLE_DIR / "functions.jsonl")}
    assert len(functions) == sum(len(i.verifiers) for i in project_bundle.instructions)
    insts = {i.id: i for i in project_bundle.instructions}
    queries = {q.id: q for q in project_bundle.queries}
    for row in (_read_jsonl(BUNDLE_DIR / "heldout_prompts.jsonl") + _read_jsonl(BUNDLE_DIR / "train_prompts.jsonl")
                + _read_jsonl(BUNDLE_DIR / "heldout_ood_prompts.jsonl")):
        inst, query = insts[row["instruction_id"]], queries[row["query_id"]]
        assert row["prompt"] == [{"role": "user", "content": B.join_prompt(query.query, inst.instruction)}]
        assert row["verifiers"] == [v.id for v in inst.verifiers]
        assert set(row["verifiers"]) <= functions
    assert B.join_prompt(" How? ", "Be brief. ") == "How?\n\nBe brief."


def test_training_rows_interleave_instructions(project_bundle):
    train = _read_jsonl(BUNDLE_DIR / "train_prompts.jsonl")
    trained, _ = B.split_instructions(project_bundle.instructions)
    assert [r["instruction_id"] for r in train[:len(trained)]] == [i.id for i in trained]


def test_split_depends_on_ids_only_and_is_stable_when_queries_are_added(project_bundle):
    queries = project_bundle.queries
    _, heldout = B.split_queries(queries)
    _, heldout_reversed = B.split_queries(list(reversed(queries)))
    assert {q.id for q in heldout} == {q.id for q in heldout_reversed}
    extra = [B.Query(f"new{i:03d}", f"A brand new everyday question number {i}?") for i in range(20)]
    _, heldout_more = B.split_queries(queries + extra)
    old_ids = {q.id for q in queries}
    moved = {q.id for q in heldout} ^ {q.id for q in heldout_more if q.id in old_ids}
    assert len(moved) <= len(extra)


def test_build_is_deterministic(project_bundle):
    assert B.build_derived(project_bundle) == B.build_derived(B.load_bundle(BUNDLE_DIR))


# ---------------------------------------------------------------- the entry point and bad input


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    target = tmp_path / "verifiers"
    shutil.copytree(BUNDLE_DIR, target)
    return target


def test_check_mode_flags_stale_files_and_regeneration_fixes_them(bundle_copy, capsys):
    assert B.cli(["--dir", str(bundle_copy), "--check"]) == 0
    (bundle_copy / "heldout_prompts.jsonl").write_text("{}\n")
    (bundle_copy / "functions.jsonl").unlink()
    assert B.cli(["--dir", str(bundle_copy), "--check"]) == 1
    err = capsys.readouterr().err
    assert "heldout_prompts.jsonl" in err and "functions.jsonl" in err and "train_prompts.jsonl" not in err
    assert B.cli(["--dir", str(bundle_copy)]) == 0
    assert B.cli(["--dir", str(bundle_copy), "--check"]) == 0
    assert (bundle_copy / "heldout_prompts.jsonl").read_text() == (BUNDLE_DIR / "heldout_prompts.jsonl").read_text()


def test_editing_an_instruction_changes_the_derived_rows(bundle_copy):
    lines = (bundle_copy / "instructions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["instruction"] = "Keep it under 20 words, please."
    lines[0] = json.dumps(first)
    (bundle_copy / "instructions.jsonl").write_text("\n".join(lines) + "\n")
    assert B.cli(["--dir", str(bundle_copy), "--check"]) == 1
    assert B.cli(["--dir", str(bundle_copy)]) == 0
    rows = _read_jsonl(bundle_copy / "heldout_prompts.jsonl")
    assert rows[0]["prompt"][0]["content"].endswith("\n\nKeep it under 20 words, please.")


def _good_instruction() -> dict:
    return {
        "id": "no_commas",
        "instruction": "No commas.",
        "category": "punctuation",
        "verifiers": [
            {"id": "no_commas/v1", "code": "def evaluate(response):\n    return ',' not in response\n"},
            {"id": "no_commas/v2", "code": "def evaluate(response):\n    return response.count(',') == 0\n"},
        ],
        "cases": [{"input": "a,b", "output": False}] + [{"input": f"text {i}", "output": True} for i in range(5)],
    }


def _with(**changes) -> dict:
    obj = _good_instruction()
    obj.update(changes)
    return obj


BAD_INSTRUCTIONS = {
    "bad_json": ("{not json", ":2: not valid JSON"),
    "missing_category": (json.dumps(_with(category="")), ":2: field 'category'"),
    "one_verifier": (json.dumps(_with(verifiers=_good_instruction()["verifiers"][:1])), ":2: field 'verifiers'"),
    "few_cases": (json.dumps(_with(cases=_good_instruction()["cases"][:3])), ":2: field 'cases'"),
    "one_sided_cases": (
        json.dumps(_with(cases=[{"input": str(i), "output": True} for i in range(6)])),
        "both true and false",
    ),
    "syntax_error": (
        json.dumps(_with(verifiers=[*_good_instruction()["verifiers"][:1], {"id": "x/v2", "code": "def evaluate(:"}])),
        ":2: field 'verifiers[1].code': verifier 'x/v2': syntax error",
    ),
    "no_evaluate": (
        json.dumps(_with(verifiers=[*_good_instruction()["verifiers"][:1], {"id": "x/v2", "code": "def f(r): 1"}])),
        "defines no top-level function evaluate",
    ),
    "same_code_twice": (
        json.dumps(
            _with(verifiers=[{"id": f"x/v{i}", "code": "def evaluate(r):\n    return True\n"} for i in (1, 2)])
        ),
        "same code twice",
    ),
    "verifiers_not_a_list": (json.dumps(_with(verifiers=3)), ":2: field 'verifiers': must be a list"),
    "output_not_bool": (
        json.dumps(_with(cases=[{"input": "a", "output": "yes"}] + _good_instruction()["cases"])),
        ":2: field 'cases[0]': needs 'input' (a string) and 'output' (true or false)",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_INSTRUCTIONS))
def test_bad_instruction_lines_name_file_line_and_field(tmp_path, name):
    bad_line, expected = BAD_INSTRUCTIONS[name]
    other = _good_instruction()
    other["id"] = "other"
    other["verifiers"] = [{**v, "id": v["id"].replace("no_commas", "other")} for v in other["verifiers"]]
    path = tmp_path / "instructions.jsonl"
    path.write_text(json.dumps(other) + "\n" + bad_line + "\n")
    with pytest.raises(B.BundleError) as info:
        B.load_instructions(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_duplicate_instruction_and_verifier_ids_are_reported(tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text(json.dumps(_good_instruction()) + "\n\n" + json.dumps(_good_instruction()) + "\n")
    with pytest.raises(B.BundleError, match=r":3: field 'id': duplicate id 'no_commas' \(first on line 1\)"):
        B.load_instructions(path)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"id": "q1", "query": "too short"}, ":2: field 'query': 9 characters"),
        ({"id": "q1", "query": "x" * 201}, ":2: field 'query': 201 characters"),
        ({"id": "q0", "query": "Another question that is long enough?"}, ":2: field 'id': duplicate id 'q0'"),
        ({"id": "q1", "query": "  how do I keep basil ALIVE indoors?"}, ":2: field 'query': duplicate of"),
        ({"query": "A question without any id at all?"}, ":2: field 'id'"),
    ],
)
def test_bad_query_lines_name_file_line_and_field(tmp_path, row, expected):
    path = tmp_path / "queries.jsonl"
    path.write_text(
        json.dumps({"id": "q0", "query": "How do I keep basil alive indoors?"}) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(B.BundleError) as info:
        B.load_queries(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_bad_edit_loses_no_derived_file(bundle_copy, capsys):
    before = {name: (bundle_copy / name).read_text() for name in B.DERIVED_FILES}
    with (bundle_copy / "queries.jsonl").open("a") as f:
        f.write('{"id": "q9999", "query": "short"}\n')
    assert B.cli(["--dir", str(bundle_copy)]) == 2  # bad input, as every command
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoif bundle: error: ") and "queries.jsonl:" in err[0], err
    assert {name: (bundle_copy / name).read_text() for name in B.DERIVED_FILES} == before


def test_several_problems_are_one_error_at_the_first_naming_the_rest(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps({"id": "q0", "query": "short"}) + "\n\n"
                    + json.dumps({"query": "A question without any id at all?"}) + "\n")
    with pytest.raises(B.BundleError) as info:
        B.load_queries(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 1, "query")  # FILE:LINE: field, as every InputError
    assert "\n" not in str(err) and f"{path}:3: field 'id': must be a non-empty string" in str(err)
