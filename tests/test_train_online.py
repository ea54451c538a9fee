"""AutoIF online DPO end to end in one process: sample, score in the real sandbox pool, pair, train, per round.

Run: python -m pytest tests/test_train_online.py -q
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from autoif_train.configs import parse_recipe
from autoif_train.data.rows import DataError
from autoif_train.train import main

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "online_dpo.yaml"
DATA = ROOT / "tests" / "data"


def _run(model_dir, out, *overrides):
    args = parse_recipe(str(RECIPE), ["--model_name_or_path", str(model_dir), "--output_dir", str(out), *overrides])
    return main(*args)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_rounds_write_samples_scores_pairs_and_train(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _run(tiny_model_dir, out, "--eval_dataset_path", str(DATA / "heldout_prompts.jsonl"),
                  "--eval_every_round", "true")

    # one record per round, in the result and in rounds.jsonl, with the metrics
    assert [r["round"] for r in result.rounds] == [0, 1]
    assert _jsonl(out / "rounds.jsonl") == result.rounds
    for rec in result.rounds:
        for key in ("mean_pass_rate", "pair_share", "pairs", "skipped_prompts", "dpo_loss", "rewards_margins",
                    "rewards_accuracies", "generation_seconds", "scoring_seconds", "training_seconds"):
            assert rec[key] is not None, key
        assert rec["pairs"] > 0 and rec["train_steps"] >= 1
        assert (out / rec["checkpoint"] / "trainer_state.json").is_file()
        assert rec["prompts"] == 4 and rec["prompts_with_pair"] + rec["skipped_prompts"] == 4

    for r, rec in enumerate(result.rounds):
        folder = out / "rounds" / f"round_{r:04d}"
        samples = _jsonl(folder / "samples.jsonl")
        scores = _jsonl(folder / "scores.jsonl")
        pairs = _jsonl(folder / "pairs.jsonl")
        # round r takes prompts 4r..4r+3, K = 4 samples each: one record per sample, in prompt order
        assert [(s["prompt_id"], s["sample_index"]) for s in samples] == [
            (f"p{i:02d}", k) for i in range(4 * r, 4 * r + 4) for k in range(4)]
        assert [(s["prompt_id"], s["sample_index"]) for s in scores] == [
            (s["prompt_id"], s["sample_index"]) for s in samples]
        tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        for s in samples:  # the record's text is its token ids decoded; finish reason and length agree
            assert s["text"] == tok.decode(s["completion_ids"], skip_special_tokens=True)
            assert s["num_tokens"] == len(s["completion_ids"]) <= 8
            assert s["finish_reason"] == ("stop" if s["completion_ids"][-1] == tok.eos_token_id else "length")
        # scores are the verifiers' real verdicts: recompute the length-parity checks here
        for s, sc in zip(samples, scores):
            bools = [v for v in sc["results"] if v is not None]
            assert sc["pass_rate"] == pytest.approx(sum(bools) / len(bools))
            if s["prompt_id"] in ("p00", "p04"):  # single verifier: even length
                assert sc["results"] == [len(s["text"]) % 2 == 0]
        by_slot = {(s["prompt_id"], s["sample_index"]): s for s in samples}
        for p in pairs:  # pairs train on the sampled ids of the samples they name
            assert p["chosen_ids"] == by_slot[(p["prompt_id"], p["chosen_sample"])]["completion_ids"]
            assert p["rejected_ids"] == by_slot[(p["prompt_id"], p["rejected_sample"])]["completion_ids"]
        for key in ("mean_completion_tokens", "clipped_ratio", "eos_share", "unscored_share"):
            assert rec[key] is not None, key
        assert rec["clipped_ratio"] == pytest.approx(sum(s["finish_reason"] == "length" for s in samples) / 16)
        heldout = _jsonl(folder / "heldout.jsonl")  # one sample per held-out prompt after this round's update
        assert [h["prompt_id"] for h in heldout] == ["h0", "h1", "h2"]
        assert rec["heldout_pass_rate"] == pytest.approx(sum(h["pass_rate"] for h in heldout) / 3)
        assert heldout[0]["pass_rate"] == float(len(heldout[0]["response"]) % 2 == 0)
        rates = [sc["pass_rate"] for sc in scores]
        assert min(rates) == 0.0 and max(rates) >= 0.5  # pass rates vary, which pairs need
        # the pair rule: chosen >= 0.5, rejected == 0, at most 2 x 2 per prompt
        assert len(pairs) == rec["pairs"]
        for p in pairs:
            assert p["chosen_pass_rate"] >= 0.5 and p["rejected_pass_rate"] == 0.0
        per_prompt = {}
        for p in pairs:
            per_prompt[p["prompt_id"]] = per_prompt.get(p["prompt_id"], 0) + 1
        assert max(per_prompt.values()) <= 4 and len(per_prompt) == rec["prompts_with_pair"]

    # the policy moved, and the saved final model is the last round's checkpoint
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    last = load_file(str(out / result.rounds[-1]["checkpoint"] / "model.safetensors"))
    assert all(torch.equal(last[k], after[k]) for k in after)


def test_round_without_pairs_is_logged_and_skipped(tiny_model_dir, tmp_path, caplog, capsys):
    out = tmp_path / "empty"
    with caplog.at_level("WARNING"):
        result = _run(tiny_model_dir, out, "--dataset_path", str(DATA / "online_prompts_always_pass.jsonl"),
                      "--prompts_per_round", "2", "--report_to", "tensorboard")
    assert [(r["round"], r["pairs"], r["train_steps"], r["checkpoint"]) for r in result.rounds] == [
        (0, 0, 0, None), (1, 0, 0, None)]
    assert all(r["mean_pass_rate"] == 1.0 and r["skipped_prompts"] == 2 for r in result.rounds)
    assert "round 0: no prompt gave both" in caplog.text and "round logged and skipped" in caplog.text
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained

    # the round metrics reached report_to (tensorboard here)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in out.rglob("events.out.tfevents.*")]
    tags = {tag for acc in events for tag in acc.Tags()["scalars"]}
    assert {"train/round/pairs", "train/round/mean_pass_rate", "train/round/skipped_prompts"} <= tags, tags

    # rerunning the finished run says so and trains nothing (no model load, no `train_loss 0` line)
    capsys.readouterr()
    again = _run(tiny_model_dir, out, "--dataset_path", str(DATA / "online_prompts_always_pass.jsonl"),
                 "--prompts_per_round", "2", "--report_to", "tensorboard")
    printed = capsys.readouterr()
    assert f"all 2 rounds complete in {out}" in printed.out
    assert "train_loss" not in printed.out + printed.err and again.rounds == result.rounds


def test_use_vllm_without_vllm_is_a_clear_error():
    import importlib.util
    from types import SimpleNamespace

    from autoif_train.generation.policy import build_policy_sampler

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError, match="use_vllm: true needs vLLM"):
        build_policy_sampler(trainer=None, config=SimpleNamespace(use_vllm=True))


def test_prompt_without_verifiers_fails_before_loading_a_model(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "hi", "verifiers": ["even_length/v1"]}) + "\n"
                   + json.dumps({"id": "b", "prompt": "hi"}) + "\n")
    (tmp_path / "no-model-needed").mkdir()
    (tmp_path / "no-model-needed" / "config.json").write_text("{}")  # exists, never loaded
    with pytest.raises(DataError, match=r"prompts.jsonl:2: field 'verifiers': missing"):
        _run(tmp_path / "no-model-needed", tmp_path / "o", "--dataset_path", str(bad),
             "--verifier_bundle", str(DATA / "functions.jsonl"))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_online_dpo_with_lora_saves_a_trained_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    result = _run(tiny_model_dir, out, "--num_rounds", "1", "--use_peft", "true", "--lora_r", "4",
                  "--lora_target_modules", "q_proj", "v_proj")
    assert result.rounds[0]["train_steps"] >= 1
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero
