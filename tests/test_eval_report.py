"""Evaluation reports: merged results.json, markdown table, PNG charts, per-round record."""

from __future__ import annotations

import pytest

from autoif_train.core.errors import InputError
from autoif_train.evaluation.report import load_results, markdown_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_shows_percentages_and_blanks():
    results = {
        "base": {"ifeval": {"prompt_strict": 0.25, "prompt_loose": 0.5, "instruction_strict": 0.4,
                            "instruction_loose": 0.6, "num_prompts": 4}},
        "dpo": {"verifiers": {"pass_rate": 0.755, "all_pass": 0.5}},
    }
    table = markdown_table(results).splitlines()
    assert table[0] == ("| model | ifeval prompt_strict | ifeval prompt_loose | ifeval instruction_strict | "
                        "ifeval instruction_loose | verifiers pass_rate | verifiers all_pass |")
    assert table[2] == "| base | 25.0 | 50.0 | 40.0 | 60.0 |  |  |"
    assert table[3] == "| dpo |  |  |  |  | 75.5 | 50.0 |"


def test_write_report_merges_runs_and_draws_a_chart(tmp_path):
    write_report(tmp_path, {"a": {"verifiers": {"pass_rate": 0.1, "all_pass": 0.0}}})
    merged = write_report(tmp_path, {"b": {"verifiers": {"pass_rate": 0.3, "all_pass": 0.2}},
                                     "a": {"ifeval": {"prompt_strict": 0.5}}})
    assert merged == load_results(tmp_path)
    assert merged["a"] == {"verifiers": {"pass_rate": 0.1, "all_pass": 0.0}, "ifeval": {"prompt_strict": 0.5}}
    assert merged["b"]["verifiers"]["pass_rate"] == 0.3
    assert (tmp_path / "results.png").read_bytes()[:8] == PNG_MAGIC
    assert "| b |" in (tmp_path / "results.md").read_text()


def test_corrupt_results_file_is_a_clear_error_and_is_kept(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(InputError, match=r"results\.json:1: not valid JSON .*; move it away to start over"):
        write_report(tmp_path, {"a": {"verifiers": {"pass_rate": 0.1}}})
    assert (tmp_path / "results.json").read_text() == "{not json"


def _settings(**over):
    base = {"prompts": 3, "limit": None, "max_new_tokens": 256, "backend": "transformers", "data_sha256": "ab" * 32,
            "model_sha256": "cd" * 32}
    return {**base, **over}


def test_results_measured_differently_are_refused_naming_the_difference(tmp_path):
    from autoif_train.core.errors import InputError
    from autoif_train.evaluation.report import check_compatible

    write_report(tmp_path, {"a": {"ifeval": {"prompt_strict": 0.5, "settings": _settings()}}})
    check_compatible(tmp_path, "ifeval", _settings(model_sha256="ef" * 32))  # another model: fine
    check_compatible(tmp_path, "ifbench", _settings(max_new_tokens=1))  # another benchmark: fine
    with pytest.raises(InputError, match=r"results\.json: field 'a\.ifeval\.settings'.*max_new_tokens 256 there, "
                                         r"1280 now"):
        check_compatible(tmp_path, "ifeval", _settings(max_new_tokens=1280))
    with pytest.raises(InputError, match="data_sha256"):
        check_compatible(tmp_path, "ifeval", _settings(data_sha256="00" * 32))
    (tmp_path / "results.json").write_text('{"old": {"ifeval": {"prompt_strict": 0.1}}}')
    with pytest.raises(InputError, match="written before results carried their settings"):
        check_compatible(tmp_path, "ifeval", _settings())


def test_chart_labels_name_the_prompt_count():
    from autoif_train.evaluation.report import tick_labels

    results = {"a": {"ifeval": {"prompt_strict": 0.5, "settings": _settings(prompts=541)}},
               "b": {"ifeval": {"prompt_strict": 0.6, "settings": _settings(prompts=541)}}}
    assert tick_labels(results) == ["ifeval\nprompt_strict\nn=541"]
    assert "ifeval: n=541, limit None, max_new_tokens 256" in markdown_table(results)


def test_model_fingerprint_follows_the_weights(tmp_path):
    from autoif_train.evaluation.report import model_fingerprint

    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    (tmp_path / "model.safetensors").write_bytes(b"a" * 3 * 2**20)
    first = model_fingerprint(str(tmp_path))
    assert model_fingerprint(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"a" * (3 * 2**20 - 1) + b"b")  # last byte changed
    assert model_fingerprint(str(tmp_path)) != first
    assert model_fingerprint("org/model") != model_fingerprint("org/other")
