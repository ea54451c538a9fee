"""Loading and validating online-DPO prompt rows, SFT and DPO data: errors name the file, row and field.

Run: python -m pytest tests/test_prompt_data.py -q
"""

import json
from pathlib import Path

import pytest

from autoif_train.data.rows import DataError, load_dpo_rows, load_prompt_rows, load_sft_rows

DATA = Path(__file__).parent / "data"


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_shipped_prompts_resolve_bundle_ids_and_keep_extras():
    rows = load_prompt_rows(str(DATA / "online_prompts.jsonl"))  # functions.jsonl beside it is the bundle
    assert len(rows) == 8
    assert all(code.lstrip().startswith("def evaluate") for row in rows for code in row.verifiers)
    assert rows[0].messages == [{"role": "user", "content": "Write a short poem about the sea. Keep it short."}]
    assert rows[0].extra == {"query": "Write a short poem about the sea."}
    assert rows[3].messages[0]["role"] == "system"  # `messages` rows are kept as given
    assert len(rows[2].verifiers) == 2


@pytest.mark.parametrize(
    "row, message",
    [
        ({"id": "x", "prompt": "hi"}, "prompts.jsonl:3: field 'verifiers': missing"),
        ({"id": "x", "prompt": "hi", "verifiers": []}, "prompts.jsonl:3: field 'verifiers': missing"),
        ({"id": "x", "verifiers": ["def evaluate(response):\n    return True"]}, ":3: field 'prompt': missing"),
        ({"prompt": "hi", "verifiers": ["def evaluate(response):\n    return True"]}, ":3: field 'id': missing"),
        ({"id": "x", "prompt": "hi", "verifiers": ["nope/v9"]}, ":3: field 'verifiers\\[0\\]': unknown verifier id 'nope/v9'"),
        ({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "verifiers": ["even_length/v1"]}, ":3: field 'messages': must end before the assistant turn"),
        ({"id": "ok", "prompt": "hi", "verifiers": ["even_length/v1"]}, ":3: field 'id': duplicate id 'ok'"),
    ],
)
def test_bad_prompt_rows_name_file_and_line(tmp_path, row, message):
    """The location is the real line number: the blank line between the two rows is counted."""
    good = {"id": "ok", "prompt": "hello", "verifiers": ["even_length/v1"]}
    path = str(tmp_path / "prompts.jsonl")
    Path(path).write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_prompt_rows(path, bundle_path=str(DATA / "functions.jsonl"))
    assert path in str(err.value)


def test_unknown_id_without_bundle_says_so(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi", "verifiers": ["even_length/v1"]}])
    with pytest.raises(DataError, match="no verifier_bundle given"):
        load_prompt_rows(path)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="nothere.jsonl: file not found"):
        load_prompt_rows(str(tmp_path / "nothere.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        load_sft_rows(str(bad))


def test_sft_and_dpo_rows_validated(tmp_path):
    assert len(load_sft_rows(str(DATA / "sft_tiny.jsonl"))) == 8
    assert len(load_dpo_rows(str(DATA / "dpo_tiny.jsonl"))) == 8
    no_assistant = _write(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match="s.jsonl:1: field 'messages': has no assistant turn"):
        load_sft_rows(no_assistant)
    no_rejected = _write(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match="d.jsonl:1: field 'rejected': missing"):
        load_dpo_rows(no_rejected)
