"""The paper's flow on the files `autoif synth` writes: synth -> `stage: sft` on its sft.jsonl -> `stage: online_dpo`
on its online_dpo_prompts.jsonl, starting from the SFT model; then `stage: dpo` on its dpo.jsonl.

The supervision model is the tiny random Llama (its own answers are noise; the seeds' hand-written verifiers carry
the instructions through cross-validation), so the test checks the plumbing, not the quality: every stage reads
what the previous one wrote, in the formats the recipes name, and trains.

Run: python -m pytest tests/test_synth_to_train.py -v
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_synth_pipeline import write_inputs

from autoif_train import cli
from autoif_train.train import TrainResult

ROOT = Path(__file__).resolve().parent.parent


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_synth_then_sft_then_online_dpo_on_the_files_synth_wrote(tiny_model_dir, tmp_path, monkeypatch):
    seeds, queries = write_inputs(tmp_path)
    data = tmp_path / "data" / "tiny"  # what the paper recipes read: data/<model>/
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        output_dir=str(data), seed_instructions=str(seeds), backend="transformers", model=str(tiny_model_dir),
        backend_kwargs={"progress": False, "batch_size": 8, "max_prompt_tokens": 96}, chunk_size=4,
        instruction_rewrites=1, instruction_max_tokens=8, verifier_samples=1, verifier_max_tokens=8,
        back_translations=1, back_translation_max_tokens=6, nli_filter="llm_judge", judge_max_tokens=6,
        query_source=str(queries), queries_per_instruction=2, responses_per_query=4, response_max_tokens=6,
        min_pass_rate=0.0, quality_filter=False, decontamination_sources=[], decontamination_required=False,
    )))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["synth", "--config", str(recipe)]) == 0
    sft_rows, online_rows = _rows(data / "sft.jsonl"), _rows(data / "online_dpo_prompts.jsonl")
    assert sft_rows and online_rows and all(r["verifiers"] for r in online_rows)

    results: list[TrainResult] = []
    import autoif_train.train as train

    real_main = train.main
    monkeypatch.setattr(train, "main", lambda *a: results.append(real_main(*a)) or results[-1])
    sft_out, online_out = tmp_path / "outputs" / "sft", tmp_path / "outputs" / "online_dpo"
    assert cli.main(["train", "--config", str(ROOT / "recipes/tiny/sft.yaml"), "--model_name_or_path",
                     str(tiny_model_dir), "--dataset_path", str(data / "sft.jsonl"), "--output_dir", str(sft_out),
                     "--max_steps", "2"]) in (0, None)
    assert (sft_out / "model.safetensors").exists() and results[-1].metrics["train_loss"] > 0
    assert cli.main(["train", "--config", str(ROOT / "recipes/tiny/online_dpo.yaml"), "--model_name_or_path",
                     str(sft_out), "--dataset_path", str(data / "online_dpo_prompts.jsonl"), "--output_dir",
                     str(online_out), "--num_rounds", "1", "--prompts_per_round", str(len(online_rows)),
                     "--num_samples", "4", "--max_new_tokens", "8"]) in (0, None)
    rounds = results[-1].rounds
    assert len(rounds) == 1 and rounds[0]["prompts"] == len(online_rows)
    sampled = {s["prompt_id"] for s in _rows(online_out / "rounds" / "round_0000" / "samples.jsonl")}
    assert sampled == {r["id"] for r in online_rows}  # every synthesized prompt was sampled and scored
    scores = _rows(online_out / "rounds" / "round_0000" / "scores.jsonl")
    assert all(len(s["results"]) == len(next(r for r in online_rows if r["id"] == s["prompt_id"])["verifiers"])
               for s in scores)
    # offline DPO on synth's preference pairs (instruction-level pairs exist even when the tiny model's answers
    # give no query-level pair), from the SFT model as well
    dpo_rows = _rows(data / "dpo.jsonl")
    assert dpo_rows and all({"prompt", "chosen", "rejected"} <= r.keys() for r in dpo_rows)
    assert cli.main(["train", "--config", str(ROOT / "recipes/tiny/dpo.yaml"), "--model_name_or_path", str(sft_out),
                     "--dataset_path", str(data / "dpo.jsonl"), "--output_dir", str(tmp_path / "outputs" / "dpo"),
                     "--max_steps", "1"]) in (0, None)
    assert results[-1].stage == "dpo" and (tmp_path / "outputs" / "dpo" / "model.safetensors").exists()
