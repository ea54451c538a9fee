"""Drift guards: every module imports, recipes open with a header, the CLI advertises only what works.

(Every training recipe parsing into its config is checked in test_train_recipes.py.)

Run: python -m pytest tests/test_foundation.py -q
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import autoif_train
from autoif_train import cli
from autoif_train.configs import RecipeError, parse_recipe, parse_train_args

REPO = Path(__file__).resolve().parent.parent


def _all_modules():
    return [m.name for m in pkgutil.walk_packages(autoif_train.__path__, prefix="autoif_train.")]


@pytest.mark.parametrize("name", _all_modules())
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_opens_with_a_comment_header(recipe):
    first = recipe.read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{recipe} must open with a comment header (what, hardware, exact command)"


def test_misspelled_recipe_key_is_named_with_suggestion(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stage: dpo\nmodel_name_or_path: x\nlerning_rate: 1.0e-6\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(str(recipe))
    assert "lerning_rate" in str(err.value) and "learning_rate" in str(err.value) and str(recipe) in str(err.value)


def test_unknown_flag_is_named(tmp_path):
    with pytest.raises(RecipeError, match="num_sample.*num_samples"):
        parse_train_args(["--stage", "online_dpo", "--num_sample", "3", "--output_dir", str(tmp_path)])


def test_command_line_overrides_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: online_dpo\nmodel_name_or_path: x\nnum_samples: 8\nbeta: 0.1\n")
    _, cfg, _ = parse_recipe(str(recipe), ["--num_samples", "3", "--output_dir", str(tmp_path)])
    assert cfg.num_samples == 3 and cfg.beta == 0.1


def test_bad_stage_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: ppo\nmodel_name_or_path: x\n")
    with pytest.raises(RecipeError, match="stage"):
        parse_recipe(str(recipe))


def test_precision_is_fp32_on_cpu_unless_set(tmp_path):
    _, cfg, _ = parse_train_args(["--stage", "dpo", "--output_dir", str(tmp_path)])
    assert cfg.bf16 is False


def test_cli_help_lists_only_working_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, _) in cli.SUBCOMMANDS.items():
        present = importlib.util.find_spec(module) is not None
        assert (f"  {name} " in out) == present, name


@pytest.mark.parametrize("name", sorted(cli.available()))
def test_each_advertised_subcommand_has_help(name):
    proc = subprocess.run([sys.executable, "-m", "autoif_train.cli", name, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_unknown_subcommand_fails(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_launch_sh_prints_the_command(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# header\nstage: sft\naccelerate_config: cpu_zero3\nmodel_name_or_path: x\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["/bin/bash", str(REPO / "launch.sh"), str(recipe), "--learning_rate", "1e-5"],
                          capture_output=True, text=True, env=env)
    first = proc.stdout.splitlines()[0]
    assert first.startswith("+ accelerate launch --config_file")
    assert "accelerate_configs/cpu_zero3.yaml" in first and "-m autoif_train.train" in first
    assert "--learning_rate 1e-5" in first


def test_launch_sh_multinode_variables(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\n")
    env = {"PATH": "/usr/bin:/bin", "NNODES": "8", "NODE_RANK": "3", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
    proc = subprocess.run(["/bin/bash", str(REPO / "launch.sh"), str(recipe), "--accelerate_config",
                           "zero3_multinode"], capture_output=True, text=True, env=env)
    first = proc.stdout.splitlines()[0]
    for piece in ("--num_machines 8", "--num_processes 64", "--machine_rank 3", "--main_process_ip node0",
                  "--main_process_port 1234", "zero3_multinode.yaml"):
        assert piece in first
