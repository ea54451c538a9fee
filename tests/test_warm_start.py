"""The SFT warm start (`autoif quickstart --sft-warm-start`): SFT rows are the model's own verified, complete
samples; SFT through the trainer entry point moves the weights; a finished warm start is reused.

Run: python -m pytest tests/test_warm_start.py -q
Uses the tiny model whose eos differs from `<|im_end|>` and which often ends its turn (conftest), the parity
verifiers of tests/data (each passes about half of all responses) and the sandboxed pool.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoif_train.configs import parse_train_args
from autoif_train.data.rows import load_prompt_rows
from autoif_train.sandbox import VerifierPool
from autoif_train.training.warm_start import verified_sft_rows, warm_start

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def test_sft_rows_are_complete_samples_that_pass_every_verifier(eot_model_dir):
    rows = load_prompt_rows(str(DATA / "online_prompts.jsonl"))
    with VerifierPool(workers=1, timeout=2.0) as pool:
        sft, stats = verified_sft_rows(str(eot_model_dir), rows, pool, num_samples=4, max_new_tokens=12,
                                       temperature=1.0, top_k=0, batch_size=8, seed=0)
        assert stats["samples"] == 4 * len(rows) and 0 < stats["sft_rows"] <= len(rows)
        assert stats["samples_truncated"] > 0  # some samples were cut at 12 tokens: they never become SFT rows
        by_id = {r.id: r for r in rows}
        answers = [r["completion"][-1]["content"] for r in sft]
        # re-score every kept answer independently: each passes all of its row's verifiers
        from autoif_train.rewards import VerifierCodeReward

        rates = VerifierCodeReward(pool).score([by_id[r["id"]] for r in sft], answers).rates(0.0)
    assert rates == [1.0] * len(sft)
    for row in sft:  # TRL's prompt/completion form: completion-only loss, whatever the chat template
        assert row["prompt"] == by_id[row["id"]].messages and [m["role"] for m in row["completion"]] == ["assistant"]
    assert len({r["id"] for r in sft}) == len(sft)  # at most one row per prompt


@pytest.mark.slow
@pytest.mark.parametrize("template", ["generation markers", "plain ChatML (SmolLM2)"])
def test_warm_start_trains_sft_and_is_reused(template, eot_model_dir, plain_template_model_dir, tmp_path):
    """With SmolLM2's kind of template (no `{% generation %}` markers) the warm start failed in TRL before its rows
    became prompt/completion."""
    import torch
    from safetensors.torch import load_file

    if template != "generation markers":
        eot_model_dir = plain_template_model_dir
    data = tmp_path / "prompts.jsonl"  # 16 rows: the rounds take the first 2 x 3, the warm start the last 8
    lines = (DATA / "online_prompts.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines] * 2
    data.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{i}"}) + "\n" for i, r in enumerate(rows)))
    shutil.copy(DATA / "functions.jsonl", tmp_path / "functions.jsonl")
    script_args, training_args, _ = parse_train_args([
        "--config", str(REPO / "recipes" / "quickstart" / "online_dpo.yaml"), "--model_name_or_path",
        str(eot_model_dir), "--output_dir", str(tmp_path / "dpo"), "--dataset_path", str(data),
        "--verifier_bundle", str(tmp_path / "functions.jsonl"), "--num_rounds", "2", "--prompts_per_round", "3",
        "--max_new_tokens", "12"])
    out = tmp_path / "sft"
    with VerifierPool(workers=1, timeout=2.0) as pool:
        with pytest.raises(Exception, match="sft_warm_start_prompts"):  # would overlap the rounds' prompts
            warm_start(str(eot_model_dir), script_args, training_args, pool, out, num_prompts=11)
        path, stats = warm_start(str(eot_model_dir), script_args, training_args, pool, out, num_prompts=8)
        assert stats["prompts"] == 8 and stats["sft_rows"] > 0 and stats["train_loss"] > 0
        kept = [json.loads(x)["id"] for x in (out / "sft.jsonl").read_text().splitlines()]
        assert all(int(k.rsplit("-", 1)[1]) >= 8 for k in kept)  # only the file's last 8 rows were sampled
        old, new = load_file(eot_model_dir / "model.safetensors"), load_file(Path(path) / "model.safetensors")
        assert any(not torch.equal(old[k], new[k]) for k in old), "the SFT warm start did not change the weights"
        stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
        again, stats_again = warm_start(str(eot_model_dir), script_args, training_args, pool, out, num_prompts=8)
    assert again == path and stats_again == stats
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained


def test_sft_rows_take_one_of_trls_two_forms(tmp_path):
    from autoif_train.core.errors import InputError
    from autoif_train.data.rows import load_sft_rows, sft_columns

    user, bot = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    path = tmp_path / "d.jsonl"

    def load(*rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_sft_rows(str(path))

    assert sft_columns(load({"prompt": [user], "completion": [bot]})) == ("prompt", "completion")
    assert sft_columns(load({"messages": [user, bot]})) == ("messages",)
    for rows, where in [
        (({"messages": [user, bot]}, {"prompt": [user], "completion": [bot]}), "d.jsonl:2: field 'completion': is "
                                                                              "prompt/completion, but earlier"),
        (({"completion": [bot]},), "d.jsonl:1: field 'prompt': missing"),
        (({"prompt": [user, bot], "completion": [bot]},), "d.jsonl:1: field 'prompt': must end before"),
        (({"prompt": [user], "completion": [user]},), "d.jsonl:1: field 'completion': has no assistant turn"),
        (({"prompt": [user], "completion": [bot, user]},), "d.jsonl:1: field 'completion': must hold assistant"),
    ]:
        with pytest.raises(InputError, match=where.replace("(", r"\(")):
            load(*rows)
