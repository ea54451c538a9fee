"""`autoif eval` end to end on the tiny model: all three benchmarks, a few prompts, well-formed outputs."""

from __future__ import annotations

import json

import pytest

from autoif_train.evaluate import cli, main, model_slug

IFBENCH_ROW = {"key": "num", "prompt": "Is hardship useful? Include exactly 2 numbers.",
               "instruction_id_list": ["count:numbers"], "kwargs": [{"N": 2.0}]}
METRICS = {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_eval_writes_results_table_chart_and_responses(tiny_model_dir, fresh_tiny_model_dir, ifeval_path, tmp_path,
                                                      capsys):
    ifbench = _write(tmp_path / "ifbench.jsonl", [IFBENCH_ROW] * 2)
    prompts = _write(tmp_path / "heldout.jsonl", [
        {"id": "p1", "prompt": "Write a poem.", "verifiers": ["def evaluate(response):\n    return True\n",
                                                               "def evaluate(response):\n    return False\n"]},
        {"id": "p2", "prompt": "Say yes.", "verifiers": ["def evaluate(response):\n    return len(response) >= 0\n"]},
    ])
    out = tmp_path / "eval"
    model = str(tiny_model_dir)
    cli(["--model", model, "--benchmarks", "ifeval,ifbench,verifiers", "--data", str(ifeval_path),
         "--ifbench-data", ifbench, "--verifier-prompts", prompts, "--limit", "3", "--max-new-tokens", "8",
         "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {model}
    assert set(results[model]) == {"ifeval", "ifbench", "verifiers"}
    assert METRICS <= set(results[model]["ifeval"]) and METRICS <= set(results[model]["ifbench"])
    assert results[model]["ifeval"]["num_prompts"] == 3
    assert results[model]["ifbench"]["num_prompts"] == 2
    # p1: one of two verifiers passes; p2: always passes -> (0.5 + 1.0) / 2 whatever the random model says.
    assert results[model]["verifiers"]["pass_rate"] == pytest.approx(0.75)
    for bench in results[model].values():
        assert all(0.0 <= v <= 1.0 for k, v in bench.items() if k in METRICS | {"pass_rate"})
    responses = out / "responses" / model_slug(model)
    for name, count in (("ifeval", 3), ("ifbench", 2), ("verifiers", 2)):
        rows = [json.loads(line) for line in (responses / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == count and all(isinstance(r["response"], str) for r in rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert printed.startswith("| model | ifeval prompt_strict") and f"wrote {out / 'results.json'}" in printed
    # every result carries how it was measured
    ifeval_settings = results[model]["ifeval"]["settings"]
    assert ifeval_settings["prompts"] == 3 and ifeval_settings["limit"] == 3 and ifeval_settings["max_new_tokens"] == 8
    assert ifeval_settings["backend"] == "transformers" and len(ifeval_settings["data_sha256"]) == 64
    assert "ifeval: n=3, limit 3, max_new_tokens 8" in (out / "results.md").read_text()

    # A second model evaluated later with the same settings lands beside the first; nothing is lost.
    other = str(fresh_tiny_model_dir)
    main([other], ["ifeval"], str(out), data=str(ifeval_path), limit=3, max_new_tokens=8)
    merged = json.loads((out / "results.json").read_text())
    assert set(merged) == {model, other}
    assert merged[model] == results[model]
    assert len(merged[other]["ifeval"]["settings"]["model_sha256"]) == 64
    table = (out / "results.md").read_text().splitlines()
    assert table[3].startswith(f"| {other} |")

    # Measured differently (4 new tokens, 2 prompts): refused before any generation, nothing changed
    capsys.readouterr()
    code = cli(["--model", str(fresh_tiny_model_dir), "--benchmarks", "ifeval", "--data", str(ifeval_path),
                "--limit", "2", "--max-new-tokens", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Loading weights" not in err
    assert f"{out / 'results.json'}: field '{model}.ifeval.settings'" in err
    assert "max_new_tokens 8 there, 4 now" in err and "prompts 3 there, 2 now" in err
    assert json.loads((out / "results.json").read_text()) == merged


def test_bad_benchmark_name_fails_before_loading_models(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        main(["/nonexistent"], ["ifevals"], str(tmp_path))


def test_bad_data_row_fails_before_generation(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["nope"], "kwargs": [{}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'instruction_id_list'"):
        main(["/nonexistent-model"], ["ifeval"], str(tmp_path / "out"), data=str(bad))
    assert not (tmp_path / "out").exists()
