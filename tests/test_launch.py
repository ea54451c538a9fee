"""launch.sh argument handling and its DeepSpeed build-lock check (no launch: `--dry-run` prints the command).

Run: python -m pytest tests/test_launch.py -q
"""

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tiny/sft.yaml"


def _launch(*args, env=None):
    return subprocess.run(["bash", str(REPO / "launch.sh"), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_prints_only_the_header():
    done = _launch("--help")
    assert done.returncode == 0 and done.stdout.startswith("launch.sh RECIPE.yaml")
    assert "set -euo" not in done.stdout and "pipefail" not in done.stdout


def test_missing_value_and_unknown_config_are_one_line_errors():
    done = _launch(RECIPE, "--accelerate_config")
    assert done.returncode == 2 and "unbound variable" not in done.stderr
    assert "--accelerate_config needs a value" in done.stderr and "cpu_zero3" in done.stderr
    done = _launch(RECIPE, "--accelerate_config", "zer03")
    assert done.returncode == 2
    assert "accelerate config not found: zer03" in done.stderr and "zero3 zero3_multinode" in done.stderr


def test_flags_before_the_recipe():
    done = _launch("--max_steps", "2", RECIPE, "--dry-run", "--accelerate_config", "ddp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"--config {RECIPE} --max_steps 2")
    assert "accelerate_configs/ddp.yaml" in done.stdout
    done = _launch("--bf16", "false", f"--config={RECIPE}", "--dry-run", "--accelerate_config=ddp")
    assert done.returncode == 0 and done.stdout.strip().endswith(f"--config {RECIPE} --bf16 false")


def test_stale_deepspeed_build_lock_is_named_with_the_fix(tmp_path):
    build = tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    build.mkdir(parents=True)
    lock = build / "lock"
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no nvidia-smi: the CPU path
    done = _launch(RECIPE, "--accelerate_config", "cpu_zero3", "--dry-run", env=env)
    assert done.returncode == 2
    assert f"stale DeepSpeed build lock {lock}" in done.stderr and f"rm -f '{lock}'" in done.stderr
    lock.unlink()
    done = _launch(RECIPE, "--accelerate_config", "cpu_zero3", "--dry-run", env=env)
    assert done.returncode == 0 and "compiles its shm_comm op on this first CPU launch" in done.stderr
    (build / "deepspeed_shm_comm.so").touch()
    done = _launch(RECIPE, "--accelerate_config", "cpu_zero3", "--dry-run", env=env)
    assert done.returncode == 0 and "shm_comm" not in done.stderr
