"""core/errors.py and core/io.py: one error shape (`FILE:LINE: field 'x': ...`), one reader, one atomic writer.

Run: flock /tmp/heavy.lock python -m pytest tests/test_core_io.py -q
"""

import json
import os

import pytest

from autoif_train.core.errors import EXIT_BAD_INPUT, AutoIFError, InputError, RecipeError
from autoif_train.core.io import atomic_path, check_model_folder, read_json, read_rows, write_json, write_jsonl


def test_input_error_renders_file_line_field():
    assert str(InputError("d.jsonl", 3, "prompt", "missing")) == "d.jsonl:3: field 'prompt': missing"
    assert str(InputError("d.jsonl", None, None, "file not found")) == "d.jsonl: file not found"
    assert str(InputError("no location")) == "no location"
    assert InputError("x").exit_code == RecipeError("x").exit_code == EXIT_BAD_INPUT
    assert issubclass(InputError, AutoIFError) and issubclass(InputError, ValueError)


def test_jsonl_lines_are_real_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n\n{"a": "x"}\n')
    rows = read_rows(path)
    assert [r.where.line for r in rows] == [1, 4]
    with pytest.raises(InputError, match=r"d\.jsonl:4: field 'a': must be int, got str"):
        read_rows(path, fields={"a": int})
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(InputError, match=r"d\.jsonl:3: not valid JSON"):
        read_rows(str(path))
    path.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(InputError, match=r"d\.jsonl:2: expected a JSON object, got list"):
        read_rows(path)


def test_json_list_elements_get_their_starting_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": [1,\n 2]}, {"b": 3}\n]\n')
    assert [r.where.line for r in read_rows(path)] == [2, 4, 5]
    with pytest.raises(InputError, match=r"d\.json:5: field 'a': missing"):
        read_rows(path, fields={"a": object})


def test_missing_source_and_unreachable_hub(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        read_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match=r"^no-such-org/no-such-dataset: not a local file"):
        read_rows("no-such-org/no-such-dataset")


def test_error_class_follows_the_row(tmp_path):
    class MyError(InputError):
        pass

    (tmp_path / "d.jsonl").write_text('{"a": 1}\n')
    row = read_rows(tmp_path / "d.jsonl", error=MyError)[0]
    assert isinstance(row.where.error("a", "bad"), MyError)
    assert str(row.where.error("a", "bad")).endswith("d.jsonl:1: field 'a': bad")


def test_model_folder_checked_before_loading(tmp_path):
    assert check_model_folder("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id: unchanged
    with pytest.raises(InputError, match=r"^model folder not found: \./runs/x$"):
        check_model_folder("./runs/x")
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        check_model_folder(str(tmp_path / "m"))


def test_atomic_writers_leave_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1} and read_json(path) == {"v": 1}
    assert os.listdir(path.parent) == ["out.json"]  # no temporary file left behind
    assert write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": 2}]) == 2
    assert [dict(r) for r in read_rows(tmp_path / "r.jsonl")] == [{"a": 1}, {"b": 2}]
