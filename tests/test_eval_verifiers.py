"""Held-out verifier pass rate: scoring in the real sandbox pool, and the trainer hook on an in-memory tiny model."""

from __future__ import annotations

import json

import pytest

from autoif_train.evaluation.verifier_pass_rate import (
    evaluate_verifier_pass_rate,
    load_verifier_prompts,
    score_verifier_responses,
)
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


def test_trainer_hook_generates_greedily_and_scores_in_the_sandbox(tiny_model_dir, pool, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.data.rows import PromptRow
    from autoif_train.generation import GenerationConfig, build_generator

    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    with build_generator("transformers", str(tiny_model_dir), batch_size=1, progress=False) as gen:
        expected = gen.generate([messages], GenerationConfig(n=1, temperature=0.0, max_new_tokens=12))[0][0]
    same = f"def evaluate(response):\n    return response == {expected!r}\n"
    never = "def evaluate(response):\n    return False\n"
    rows = [PromptRow(id="sea", messages=messages, verifiers=[same, never])]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.train()
    rate = evaluate_verifier_pass_rate(model, tokenizer, rows, pool, max_new_tokens=12, batch_size=1)
    assert rate == pytest.approx(0.5)  # `same` passes only if the hook's greedy text equals the generator's
    assert model.training  # the hook restores the training mode


def test_bundled_heldout_prompts_load_with_resolved_verifiers():
    from autoif_train.evaluation.verifier_pass_rate import DEFAULT_PROMPTS

    if not DEFAULT_PROMPTS.is_file():
        pytest.skip(f"{DEFAULT_PROMPTS} not generated yet")
    rows = load_verifier_prompts()
    assert rows and all(r.verifiers and all("def evaluate" in code for code in r.verifiers) for r in rows)
    assert all(r.messages[-1]["role"] == "user" for r in rows)
