"""Online DPO durability: kill a run during round 2, rerun the same command, and check what was kept and redone.

Run: python -m pytest tests/test_train_resume.py -q -m slow
The ZeRO-3 test launches 2 CPU processes with accelerate_configs/cpu_zero3.yaml (real DeepSpeed partitioning).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "online_dpo.yaml"


def _command(model_dir: Path, out: Path, distributed: bool, *extra: str) -> list[str]:
    args = ["--config", str(RECIPE), "--model_name_or_path", str(model_dir), "--output_dir", str(out), *extra]
    if distributed:
        accelerate = str(Path(sys.executable).parent / "accelerate")
        return [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"),
                "-m", "autoif_train.train", *args]
    return [sys.executable, "-m", "autoif_train.train", *args]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    env.pop("LOCAL_RANK", None)
    return env


def _run(cmd: list[str], log: Path, timeout: float = 400) -> None:
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process under it (torch's launcher puts ranks in their own sessions)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def _run_and_kill_in_round_2(cmd: list[str], out: Path, log: Path, timeout: float = 400) -> None:
    """Start the run and SIGKILL its whole process group as soon as round 2's pairs are on disk."""
    marker = out / "rounds" / "round_0001" / "pairs.json"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"run ended before round 2: {log.read_text()[-4000:]}"
            assert time.time() < deadline, "round 2 never started"
            time.sleep(0.02)
        _kill_tree(proc)
    assert not (out / "rounds" / "round_0001" / "complete.json").exists(), "round 2 finished before the kill"


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _check_resumed(out: Path, round0_before: str, samples_before: str, log: Path) -> list[dict]:
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1]  # each round once: none repeated, none lost
    assert (out / "rounds" / "round_0000" / "complete.json").read_text() == round0_before  # round 1 not redone
    assert (out / "rounds" / "round_0001" / "samples.jsonl").read_text() == samples_before  # samples reused
    assert rounds[1]["reused_pairs"] is True and rounds[0]["reused_pairs"] is False
    # round 2's optimizer steps follow round 1's: training restarted from round 1's checkpoint, not from scratch
    assert rounds[1]["global_step"] == rounds[0]["global_step"] + rounds[1]["train_steps"]
    assert "resuming at round 1 from" in log.read_text()
    return rounds


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Single process: the resumed run's final weights equal an uninterrupted run's (optimizer, scheduler and RNG
    state restored, round 2's pairs reused)."""
    extra = ("--epochs_per_round", "2", "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
             "--save_total_limit", "1")
    reference = tmp_path / "reference"
    _run(_command(tiny_model_dir, reference, False, *extra), tmp_path / "reference.log")

    out = tmp_path / "killed"
    _run_and_kill_in_round_2(_command(tiny_model_dir, out, False, *extra), out, tmp_path / "first.log")
    round0 = (out / "rounds" / "round_0000" / "complete.json").read_text()
    samples = (out / "rounds" / "round_0001" / "samples.jsonl").read_text()
    _run(_command(tiny_model_dir, out, False, *extra), tmp_path / "second.log")
    rounds = _check_resumed(out, round0, samples, tmp_path / "second.log")

    assert rounds[1]["pairs"] == _rounds(reference)[1]["pairs"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [rounds[1]["checkpoint"]]  # save_total_limit 1
    final, expected = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=1e-6, msg=f"{name} differs after resume")


@pytest.mark.slow
def test_zero3_two_processes_two_rounds_with_kill_and_resume(tiny_model_dir, tmp_path):
    """accelerate launch, 2 CPU processes, DeepSpeed ZeRO-3: killed in round 2, rerun, both rounds complete once."""
    extra = ("--epochs_per_round", "3")
    out = tmp_path / "z3"
    _run_and_kill_in_round_2(_command(tiny_model_dir, out, True, *extra), out, tmp_path / "first.log")
    round0 = (out / "rounds" / "round_0000" / "complete.json").read_text()
    samples = (out / "rounds" / "round_0001" / "samples.jsonl").read_text()
    # both ranks sampled: every prompt of the round has its K responses, in prompt order
    assert [len(json.loads(line)["responses"]) for line in samples.splitlines()] == [4, 4, 4, 4]
    _run(_command(tiny_model_dir, out, True, *extra), tmp_path / "second.log")
    rounds = _check_resumed(out, round0, samples, tmp_path / "second.log")

    for rec in rounds:  # ZeRO-3 checkpoints hold one optimizer/parameter partition per rank
        shards = sorted(p.name for p in (out / rec["checkpoint"]).glob("global_step*/*optim_states.pt"))
        assert len(shards) == 2, shards
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)
