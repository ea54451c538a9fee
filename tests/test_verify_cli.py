"""Tests of `autoif verify`: scoring user files through the sandboxed pool, and input errors naming file/line/field.

Run: python -m pytest tests/test_verify_cli.py -q
"""

from __future__ import annotations

import json

import pytest

from autoif_train import cli as autoif_cli
from autoif_train import verify

VERIFIERS = [
    {"id": "lower", "code": "def evaluate(response):\n    return response == response.lower()\n"},
    {"id": "short", "code": "def evaluate(response):\n    return 'true' if len(response.split()) < 5 else 'false'\n"},
    {"id": "hangs", "code": "def evaluate(response):\n    while True:\n        pass\n"},
    {"id": "crashes", "code": "import os\ndef evaluate(response):\n    os._exit(1)\n"},
]
RESPONSES = [
    {"id": "a", "response": "all lower and short", "verifiers": ["lower", "short"]},
    {"id": "b", "response": "Not Lower but it is quite long", "verifiers": ["lower", "short", "hangs"]},
    {"id": "c", "response": "x", "verifiers": ["hangs", "crashes"]},
    {"id": "d", "response": "inline code", "verifiers": ["def evaluate(response):\n    return 'code' in response\n"]},
    {"id": "e", "response": "no verifiers", "verifiers": []},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "V.jsonl", VERIFIERS), write_jsonl(tmp_path / "R.jsonl", RESPONSES), tmp_path


def test_scores_in_input_order(files, capsys):
    v, r, tmp = files
    out = tmp / "sub" / "O.jsonl"
    argv = ["--verifiers", str(v), "--responses", str(r), "--out", str(out), "--workers", "1", "--timeout", "0.3"]
    assert autoif_cli.main(["verify", *argv, "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": "a", "results": [True, True], "pass_rate": 1.0},
        {"id": "b", "results": [False, False, None], "pass_rate": 0.0},
        {"id": "c", "results": [None, None], "pass_rate": 0.0},
        {"id": "d", "results": [True], "pass_rate": 1.0},
        {"id": "e", "results": [], "pass_rate": 0.0},
    ]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["calls"] == 8
    assert summary["mean_pass_rate"] == pytest.approx(0.4)
    assert not (tmp / "sub" / "O.jsonl.partial").exists()


def test_main_returns_disabled_verifiers(files):
    v, r, tmp = files
    rows = [{"id": str(i), "response": "x", "verifiers": ["hangs", "lower"]} for i in range(5)]
    write_jsonl(r, rows)
    summary = verify.main(v, r, tmp / "O.jsonl", workers=1, timeout=0.2, progress=False)
    assert summary["disabled_verifiers"] == ["hangs"]
    results = [json.loads(line)["results"] for line in (tmp / "O.jsonl").read_text().splitlines()]
    assert results == [[None, True]] * 5


@pytest.mark.parametrize(
    "which, line, message",
    [
        ("R", '{"id": "z", "response": "x", "verifiers": ["lower"]', "R.jsonl:3: not valid JSON"),
        ("R", '{"id": "z", "verifiers": ["lower"]}', "R.jsonl:3: field 'response': missing"),
        ("R", '{"id": "z", "response": 5, "verifiers": []}', "R.jsonl:3: field 'response': must be str"),
        ("R", '{"id": "z", "response": "x", "verifiers": ["lowr"]}', "R.jsonl:3: field 'verifiers[0]': unknown"),
        ("R", "[1, 2]", "R.jsonl:3: expected a JSON object"),
        ("V", '{"id": "lower", "code": "def evaluate(r):\\n    return True\\n"}', "V.jsonl:3: field 'id': duplicate"),
        ("V", '{"id": "new"}', "V.jsonl:3: field 'code': missing"),
    ],
)
def test_malformed_input_names_file_line_and_field(files, capsys, which, line, message):
    v, r, tmp = files
    target = v if which == "V" else r
    rows = (VERIFIERS if which == "V" else RESPONSES)[:2]
    target.write_text("".join(json.dumps(x) + "\n" for x in rows) + line + "\n")
    out = tmp / "O.jsonl"
    out.write_text("previous results\n")
    code = verify.cli(["--verifiers", str(v), "--responses", str(r), "--out", str(out), "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == "previous results\n"  # nothing already done is lost
