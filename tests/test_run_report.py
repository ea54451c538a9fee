"""`autoif report RUN_DIR`: which log it reads, what it refuses, and that it never fills in unlogged values.

Run: python -m pytest tests/test_run_report.py -q      (the real-run checks are in tests/test_quickstart.py)
"""

from __future__ import annotations

import json
import math

import pytest

from autoif_train import cli
from autoif_train.training.run_report import history, write_run_report


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rounds_log_is_reported_per_round_and_missing_values_stay_missing(tmp_path):
    run = tmp_path / "run"
    _jsonl(run / "rounds.jsonl", [
        {"round": 0, "mean_pass_rate": 0.25, "pairs": 10, "prompts_with_pair": 4, "dpo_loss": 0.69},
        {"round": 1, "mean_pass_rate": 0.40, "pairs": 0, "prompts_with_pair": 0, "dpo_loss": None},
    ])
    hist = history(run)
    assert hist.kind == "rounds" and hist.series("dpo_loss") == ([0], [0.69])  # round 1 trained nothing
    md = write_run_report(run).read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and "0.400" in rows[0] and "| - |" in rows[0]
    assert (run / "report" / "pass_rate_per_round.png").is_file()
    assert not (run / "report" / "completion_length.png").exists()  # nothing logged, no empty plot


def test_grpo_log_is_reported_per_step_without_the_final_summary(tmp_path):
    run = tmp_path / "grpo"
    _jsonl(run / "train_log.jsonl", [{"step": i, "reward": i / 10, "loss": 0.1, "completions/mean_length": 30.0}
                                     for i in range(1, 4)] + [{"step": 3, "train_runtime": 12.0, "train_loss": 0.1}])
    hist = history(run)
    assert hist.kind == "steps" and hist.series("reward") == ([1, 2, 3], [0.1, 0.2, 0.3])
    assert all("train_runtime" not in r for r in hist.records)
    assert not any(math.isnan(v) for v in hist.series("loss")[1])


def test_a_folder_without_a_run_log_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no rounds.jsonl or train_log.jsonl" in err and str(tmp_path) in err


def test_a_bad_flag_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--outdir", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unrecognized arguments: --outdir" in err


def test_a_bad_rounds_line_names_file_and_line(tmp_path, capsys):
    (tmp_path / "rounds.jsonl").write_text('{"round": 0, "mean_pass_rate": 0.1}\n{"round": 1,\n')
    assert cli.main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'rounds.jsonl'}:2:" in capsys.readouterr().err


@pytest.mark.parametrize("folders", [["a"], ["a", "b"]])
def test_a_quickstart_folder_finds_its_one_training_run(tmp_path, folders):
    for name in folders:
        _jsonl(tmp_path / name / "rounds.jsonl", [{"round": 0, "mean_pass_rate": 0.5}])
    if len(folders) == 1:
        assert history(tmp_path).source == tmp_path / "a" / "rounds.jsonl"
    else:
        assert cli.main(["report", str(tmp_path)]) == 2
