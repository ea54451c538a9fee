"""Held-out verifier pass rate: scoring in the real sandbox pool, and `autoif eval --benchmarks verifiers` on a tiny
model (greedy responses, scored in the sandbox; bad input is one line, exit 2)."""

from __future__ import annotations

import json

import pytest

from autoif_train.evaluation.verifier_pass_rate import load_verifier_prompts, score_verifier_responses
from autoif_train.sandbox import VerifierPool

LOWER = "def evaluate(response):\n    return response.islower()\n"
BANANA = "def evaluate(response):\n    return 'banana' in response\n"
BROKEN = "def evaluate(response):\n    raise ValueError('bug')\n"


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout=2.0, isolation="seccomp") as p:
        yield p


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def prompt_file(tmp_path):
    _write(tmp_path / "functions.jsonl", [{"id": "lower/v1", "code": LOWER}])
    return _write(tmp_path / "heldout.jsonl", [
        {"id": "a", "prompt": "Write about fruit in lowercase.", "verifiers": [LOWER, BANANA], "query": "fruit"},
        {"id": "b", "messages": [{"role": "user", "content": "Fruit, lowercase."}], "verifiers": ["lower/v1", BANANA]},
        {"id": "c", "prompt": "Say ok.", "verifiers": [LOWER, BROKEN]},
    ])


def test_pass_rate_known_by_construction(prompt_file, pool):
    rows = load_verifier_prompts(prompt_file)
    assert rows[1].verifiers[0] == LOWER  # id resolved through functions.jsonl beside the prompt file
    metrics, records = score_verifier_responses(rows, ["i like banana", "I like apples", "ok"], pool)
    assert [r["results"] for r in records] == [[True, True], [False, False], [True, None]]
    assert [r["pass_rate"] for r in records] == [1.0, 0.0, 1.0]  # an erroring verifier is left out of the mean
    assert metrics["pass_rate"] == pytest.approx(2 / 3)
    assert metrics["all_pass"] == pytest.approx(1 / 3)
    assert metrics["verifier_errors"] == 1 and metrics["num_calls"] == 6
    assert records[0]["query"] == "fruit"


def test_limit_and_missing_ids_are_reported(prompt_file, tmp_path):
    assert [r.id for r in load_verifier_prompts(prompt_file, limit=2)] == ["a", "b"]
    (tmp_path / "bad").mkdir()
    bad = _write(tmp_path / "bad" / "p.jsonl", [{"id": "x", "prompt": "p", "verifiers": ["nope/v1"]}])
    with pytest.raises(ValueError, match=r"p\.jsonl:1: field 'verifiers\[0\]': unknown verifier id 'nope/v1'"):
        load_verifier_prompts(bad)


def test_eval_scores_the_greedy_responses_in_the_sandbox(tiny_model_dir, tmp_path):
    from autoif_train.evaluate import main
    from autoif_train.generation import GenerationConfig, build_generator

    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    with build_generator("transformers", str(tiny_model_dir), batch_size=1, progress=False) as gen:
        expected = gen.generate([messages], GenerationConfig(n=1, temperature=0.0, max_new_tokens=12))[0][0]
    same = f"def evaluate(response):\n    return response == {expected!r}\n"
    never = "def evaluate(response):\n    return False\n"
    prompts = _write(tmp_path / "heldout.jsonl", [{"id": "sea", "messages": messages, "verifiers": [same, never]}])
    model = str(tiny_model_dir)
    results = main([model], ["verifiers"], str(tmp_path / "eval"), verifier_prompts=prompts, max_new_tokens=12,
                   batch_size=1, timeout=2.0)
    metrics = results[model]["verifiers"]
    assert metrics["pass_rate"] == pytest.approx(0.5)  # `same` passes only if eval's greedy text is the generator's
    assert metrics["num_prompts"] == 1 and metrics["verifier_errors"] == 0


def test_eval_without_the_bundled_prompts_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from autoif_train import evaluate
    from autoif_train.evaluation import verifier_pass_rate

    missing = tmp_path / "verifiers" / "heldout_prompts.jsonl"
    monkeypatch.setattr(verifier_pass_rate, "DEFAULT_PROMPTS", missing)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # checked only after the data, never loaded
    code = evaluate.cli(["--model", str(tmp_path / "model"), "--benchmarks", "verifiers", "--out", str(tmp_path / "e")])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert err == [f"autoif eval: error: {missing}: bundled held-out prompts not found (generate them with "
                   "`autoif bundle`) and no prompt file was given"], err


def test_bundled_heldout_prompts_load_with_resolved_verifiers():
    from autoif_train.evaluation.verifier_pass_rate import DEFAULT_PROMPTS

    if not DEFAULT_PROMPTS.is_file():
        pytest.skip(f"{DEFAULT_PROMPTS} not generated yet")
    rows = load_verifier_prompts()
    assert rows and all(r.verifiers and all("def evaluate" in code for code in r.verifiers) for r in rows)
    assert all(r.messages[-1]["role"] == "user" for r in rows)
