"""A non-editable wheel install ships the verifier bundle and the recipes, and its commands start.

Builds the wheel from a copy of the tracked files (`pip wheel --no-deps --no-build-isolation`, offline), installs
it with `pip install --no-deps --target` into a fresh folder, and runs the installed `autoif` from outside the
checkout with that folder first on the path (the environment's dependencies are reused, not reinstalled).
Run: flock /tmp/heavy.lock python -m pytest tests/test_wheel.py -q
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True, text=True)
    wheel = next((root / "dist").glob("autoif_train-*.whl"))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    return wheel, target


def _run(target: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, *args], cwd=target.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def test_wheel_ships_bundle_and_recipes(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("autoif_train/resources/verifiers/heldout_prompts.jsonl",
                   "autoif_train/resources/verifiers/functions.jsonl",
                   "autoif_train/resources/recipes/quickstart/online_dpo.yaml",
                   "autoif_train/resources/accelerate_configs/cpu_zero3.yaml",
                   "autoif_train/core/io.py"):
        assert needed in names, needed


def test_installed_commands_resolve_bundled_paths(installed):
    _, target = installed
    probe = _run(target, "-c", "import autoif_train, autoif_train.quickstart as q, autoif_train.bundle as b; "
                               "print(autoif_train.__file__); print(q.DEFAULT_RECIPE); print(q.DEFAULT_HELDOUT); "
                               "print(b.DEFAULT_DIR)")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert all(line.startswith(str(target)) for line in lines), lines  # the installed copy, not the checkout
    assert all(Path(p).exists() for p in lines[1:])
    for args in (["quickstart", "--help"], ["models", "prepare", "--help"], ["train", "--help"]):
        done = _run(target, "-m", "autoif_train.cli", *args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert "usage" in done.stdout
    script = target / "bin" / "autoif"
    assert script.is_file()
    done = _run(target, str(script))
    assert done.returncode == 2 and "usage: autoif <command>" in done.stderr
