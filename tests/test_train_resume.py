"""Online DPO durability: SIGKILL a run at any stage, rerun the same command, and compare with an uninterrupted run.

Run: python -m pytest tests/test_train_resume.py -q -m slow
Kills land at a random optimizer step inside round 1 (checkpoints every step), during sampling, during scoring,
and between a round's end checkpoint and its completion marker. In every case the resumed run ends with the same
weights (atol 1e-6), the same rounds.jsonl (timings aside) and the same stored reference log-probs as the
uninterrupted one, keeps every finished chunk, and repeats no optimizer step. The ZeRO-3 test launches 2 CPU processes with accelerate_configs/cpu_zero3.yaml.
"""

import contextlib
import json
import os
import random
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
SLOW_VERIFIER = "def evaluate(response):\n    import time\n    time.sleep(0.15)\n    return len(response) % 2 == 0\n"
# 2 rounds x 4 prompts, chunks of 2 prompts, a checkpoint after every optimizer step, a decaying global schedule
EXTRA = ("--epochs_per_round", "2", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.2", "--pairs_per_round",
         "5", "--rollout_chunk_prompts", "2", "--save_steps", "1", "--save_total_limit", "1")
TIMING_KEYS = ("generation_seconds", "scoring_seconds", "training_seconds", "weight_sync_seconds", "reused_samples",
               "reused_pairs", "reference_seconds")


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


def _run(cmd: list[str], log: Path, timeout: float = 500) -> None:
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


def _run_and_kill_when(cmd: list[str], ready, log: Path, timeout: float = 500) -> None:
    """Start the run and SIGKILL its whole process group as soon as `ready()` is true."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"run ended before the kill point: {log.read_text()[-4000:]}"
            assert time.time() < deadline, "kill point never reached"
            time.sleep(0.01)
        _kill_tree(proc)


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _comparable(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in rounds]


def _steps_trained(log: Path) -> int:
    """Optimizer steps the run trained (logging_steps 1: HF prints one dict with a 'loss' key per step)."""
    return sum("'loss':" in line for line in log.read_text().splitlines())


def _resumed_from(log: Path) -> int:
    text = log.read_text()
    return int(text.split("resuming at round ")[1].split("checkpoint-")[1].split()[0])


def _check_same_as(out: Path, reference: Path) -> None:
    assert _comparable(_rounds(out)) == _comparable(_rounds(reference))
    final, expected = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=1e-6, msg=f"{name} differs after resume")
    for a, b in ((out, reference),):  # the same samples, scores, pairs and reference log-probs in every round
        for r in range(2):
            for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "reference.jsonl"):
                assert (a / "rounds" / f"round_{r:04d}" / name).read_text() == \
                    (b / "rounds" / f"round_{r:04d}" / name).read_text(), (r, name)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """One uninterrupted single-process run with the settings every kill test uses."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(_command(tiny_model_dir, out, False, *EXTRA), out.parent / "reference.log")
    rounds = _rounds(out)
    assert [r["train_steps"] for r in rounds] == [5, 5] and [r["pairs"] for r in rounds] == [5, 5]
    return out


@pytest.mark.slow
def test_kill_at_a_random_step_inside_round_1_then_resume_equals_uninterrupted(tiny_model_dir, reference, tmp_path):
    rounds = _rounds(reference)
    start, end = rounds[1]["global_step"] - rounds[1]["train_steps"], rounds[1]["global_step"]
    kill_at = random.Random(os.getpid()).randrange(start + 1, end)  # a checkpoint strictly inside round 1
    print(f"killing after checkpoint-{kill_at} (round 1 trains steps {start + 1}..{end})")
    out = tmp_path / "killed"
    marker = out / f"checkpoint-{kill_at}" / "trainer_state.json"
    _run_and_kill_when(_command(tiny_model_dir, out, False, *EXTRA), marker.exists, tmp_path / "first.log")
    assert not (out / "rounds" / "round_0001" / "complete.json").exists()
    _run(_command(tiny_model_dir, out, False, *EXTRA), tmp_path / "second.log")
    _check_same_as(out, reference)
    # the rerun continued after the newest checkpoint it found, repeating no optimizer step
    newest = _resumed_from(tmp_path / "second.log")
    assert kill_at <= newest < end and _steps_trained(tmp_path / "second.log") == end - newest
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{end}"]  # save_total_limit 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sampling", "scoring"])
def test_kill_during_rollouts_keeps_finished_chunks(tiny_model_dir, tmp_path, stage):
    """Killed while round 1's second chunk is being sampled (or scored): the first chunk's files survive unchanged
    and are reused, and the run ends as the uninterrupted one."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "online_prompts.jsonl").read_text().splitlines()]
    data = ("--dataset_path", str(prompts), "--verifier_bundle", str(ROOT / "tests" / "data" / "functions.jsonl"))
    if stage == "scoring":  # a slow verifier keeps the run in scoring long enough to be killed there
        rows = [dict(row, verifiers=row["verifiers"] + [SLOW_VERIFIER]) for row in rows]
        extra = (*EXTRA, *data)
    else:  # longer samples, one prompt per generate call: sampling a chunk takes a few seconds
        extra = (*EXTRA, *data, "--max_new_tokens", "48", "--generation_batch_size", "1")
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = tmp_path / "uninterrupted"
    _run(_command(tiny_model_dir, base, False, *extra), tmp_path / "base.log")
    out = tmp_path / "killed"
    chunks = out / "rounds" / "round_0001" / "chunks"

    def ready():  # sampling: chunk 0 whole, chunk 1 being sampled; scoring: chunk 1 sampled, being scored
        meta = chunks / ("00000.meta.json" if stage == "sampling" else "00001.meta.json")
        return meta.exists() and ("scores_seconds" if stage == "sampling" else "samples_seconds") in meta.read_text()

    _run_and_kill_when(_command(tiny_model_dir, out, False, *extra), ready, tmp_path / "first.log")
    kept = {p.name: p.read_bytes() for p in chunks.iterdir() if not p.name.endswith(".tmp")}
    assert not (out / "rounds" / "round_0001" / "plan.json").exists()
    _run(_command(tiny_model_dir, out, False, *extra), tmp_path / "second.log")
    for name, data in kept.items():
        if name.endswith(".jsonl"):
            assert (chunks / name).read_bytes() == data, f"{name} was redone"
    _check_same_as(out, base)
    rounds = _rounds(out)
    assert rounds[1]["reused_samples"] is True
    assert _steps_trained(tmp_path / "second.log") == rounds[1]["train_steps"]  # round 0's steps not repeated


@pytest.mark.slow
def test_kill_between_round_checkpoint_and_completion_marker_retrains_nothing(tiny_model_dir, reference, tmp_path):
    """The on-disk state of a kill after round 1's end checkpoint and before its complete.json: the rerun marks the
    round complete from the checkpoint (and runs the held-out evaluation it missed) without a training step."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "rounds" / "round_0001" / "complete.json").unlink()
    (out / "rounds.jsonl").write_text(json.dumps(_rounds(reference)[0]) + "\n")
    _run(_command(tiny_model_dir, out, False, *EXTRA), tmp_path / "rerun.log")
    assert _steps_trained(tmp_path / "rerun.log") == 0
    _check_same_as(out, reference)


@pytest.mark.slow
def test_zero3_two_processes_kill_inside_round_1_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    """accelerate launch, 2 CPU processes, DeepSpeed ZeRO-3: killed after a mid-round checkpoint of round 1,
    rerun: the same weights and rounds.jsonl as an uninterrupted ZeRO-3 run."""
    extra = (*EXTRA, "--per_device_train_batch_size", "1")
    reference = tmp_path / "z3-reference"
    _run(_command(tiny_model_dir, reference, True, *extra), tmp_path / "reference.log")
    rounds = _rounds(reference)
    start, end = rounds[1]["global_step"] - rounds[1]["train_steps"], rounds[1]["global_step"]
    out = tmp_path / "z3"
    marker = out / f"checkpoint-{start + 1}" / "trainer_state.json"
    _run_and_kill_when(_command(tiny_model_dir, out, True, *extra), marker.exists, tmp_path / "first.log")
    _run(_command(tiny_model_dir, out, True, *extra), tmp_path / "second.log")
    _check_same_as(out, reference)
    for rec in _rounds(out):  # ZeRO-3 checkpoints hold one optimizer/parameter partition per rank
        if (out / rec["checkpoint"]).exists():
            shards = sorted(p.name for p in (out / rec["checkpoint"]).glob("global_step*/*optim_states.pt"))
            assert len(shards) == 2, shards
    assert start + 1 < end


@pytest.mark.slow
def test_held_out_evaluation_cut_short_is_redone_alone(tiny_model_dir, reference, tmp_path):
    """The held-out evaluation runs after complete.json: killed during it, the rerun evaluates the finished round's
    checkpoint and merges the result into its record, without retraining anything."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)  # both rounds complete, no held-out pass rate recorded yet
    heldout = ("--eval_dataset_path", str(ROOT / "tests" / "data" / "heldout_prompts.jsonl"), "--eval_every_round",
               "true")
    _run(_command(tiny_model_dir, out, False, *EXTRA, *heldout), tmp_path / "rerun.log")
    assert _steps_trained(tmp_path / "rerun.log") == 0
    rounds = _rounds(out)
    assert "heldout_pass_rate" not in rounds[0] and 0.0 <= rounds[1]["heldout_pass_rate"] <= 1.0
    assert len(_jsonl_rows(out / "rounds" / "round_0001" / "heldout.jsonl")) == 3
    assert _comparable([{k: v for k, v in r.items() if k != "heldout_pass_rate"} for r in rounds]) == \
        _comparable(_rounds(reference))
    final, expected = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def _jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
