"""`stage: grpo`: TRL's GRPOTrainer on the online-DPO prompt rows, rewarded through `autoif_train.rewards` with verifier
code in the sandbox pool (never in the trainer process), IFEval constraint rows, hostile verifiers, 2 ZeRO-3 ranks.

Run: python -m pytest tests/test_grpo.py -q          (the 2-rank ZeRO-3 run is marked slow)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoif_train.configs import RecipeError, parse_recipe
from autoif_train.train import main

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "grpo.yaml"
PWNED = Path("/tmp/autoif_grpo_pwned")
HOSTILE = [
    f"import os\n\ndef evaluate(response):\n    os.system('touch {PWNED}')\n    open('{PWNED}', 'w')\n    return True\n",
    "def evaluate(response):\n    while True:\n        pass\n",
    "import os\n\ndef evaluate(response):\n    os._exit(1)\n",
    "import os, signal\n\ndef evaluate(response):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return True\n",
]
EVEN = "def evaluate(response):\n    return len(response) % 2 == 0\n"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _changed(before: Path, after: Path) -> int:
    a, b = _weights(before), _weights(after)
    return sum(not torch.equal(a[k], b[k]) for k in a)


def _prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_grpo_trains_a_few_steps_with_sandboxed_rewards(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out)])
    result = main(*args)
    assert result.stage == "grpo" and result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN
    assert _changed(tiny_model_dir, out) > 0


def test_hostile_verifiers_in_a_grpo_run_are_contained_and_training_continues(tiny_model_dir, tmp_path, monkeypatch):
    from autoif_train.training import grpo

    PWNED.unlink(missing_ok=True)
    seen = []
    real_call = grpo.RewardFunction.__call__

    def recording_call(self, *a, **k):
        out = real_call(self, *a, **k)
        seen.append((self.reward().rewards[0].pool, list(out)))  # verifier_code's pool, this rank's own
        return out

    monkeypatch.setattr(grpo.RewardFunction, "__call__", recording_call)
    rows = [{"id": f"h{i}", "prompt": f"Say something, number {i}.", "verifiers": [code, EVEN]}
            for i, code in enumerate(HOSTILE)]
    rows.append({"id": "all-bad", "prompt": "Only hostile verifiers here.", "verifiers": HOSTILE[1:3]})
    data = _prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    args = parse_recipe(str(RECIPE), ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                                      "--dataset_path", str(data), "--max_steps", "5", "--verifier_timeout", "0.5"])
    result = main(*args)
    assert result.metrics["train_loss"] == result.metrics["train_loss"]
    assert _changed(tiny_model_dir, out) > 0  # training went on through every step
    assert not PWNED.exists()
    assert os.getpid() not in {w.proc.pid for pool, _ in seen for w in pool._workers}  # verifiers ran elsewhere
    rewards = [r for _, batch in seen for r in batch]
    assert len(rewards) == 5 * 4 and any(r is None for r in rewards)  # all-bad rows are unscored, not 0 or 1
    assert any(r is not None for r in rewards)


def test_grpo_on_ifeval_constraint_rows(tiny_model_dir, tmp_path):
    # word counts of 8 random tokens vary within a group, so advantages are not all 0
    rows = [{"id": "c0", "prompt": "Answer in at least 3 words without commas.",
             "instruction_id_list": ["length_constraints:number_words", "punctuation:no_comma"],
             "kwargs": [{"num_words": 3, "relation": "at least"}, {}]},
            {"id": "c1", "prompt": "Fewer than 3 words.", "instruction_id_list": ["length_constraints:number_words"],
             "kwargs": [{"num_words": 3, "relation": "less than"}]}]
    data = _prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "run"
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--dataset_path", str(data),
            "--max_steps", "3"]
    with pytest.raises(Exception, match=r"p.jsonl:1: field 'verifiers': missing: no field"):
        main(*parse_recipe(str(RECIPE), base))  # default rewards: verifier_code only
    main(*parse_recipe(str(RECIPE), [*base, "--rewards", "ifeval_checkers"]))
    assert _changed(tiny_model_dir, out) > 0
    with pytest.raises(RecipeError, match="reward_weights"):
        parse_recipe(str(RECIPE), [*base, "--rewards", "ifeval_checkers", "--reward_weights", "1", "2"])


@pytest.mark.slow
def test_grpo_on_two_zero3_ranks(tiny_model_dir, tmp_path):
    """GRPO under DeepSpeed ZeRO-3 on 2 CPU processes, each scoring its completions in its own sandbox pool."""
    out = tmp_path / "run"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
           "-m", "autoif_train.train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir),
           "--output_dir", str(out), "--per_device_train_batch_size", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rewards/verifier_code/mean" in proc.stdout + proc.stderr
    assert _changed(tiny_model_dir, out) > 0
