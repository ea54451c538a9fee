"""core/recipes.py: recipe forms, overrides, type and key errors with file and line (no model, no torch); the flag
parser of the flag-only commands, and `run_command` printing any reported error as one line.

Run: python -m pytest tests/test_core_recipes.py -q
"""

import os
from dataclasses import dataclass, field

import pytest

from autoif_train.core.errors import InputError, RecipeError, run_command
from autoif_train.core.recipes import ArgumentParser, build, positive, split_argv


@dataclass
class Demo:
    learning_rate: float = 1e-5
    num_rounds: int = 3
    name: str | None = None
    bf16: bool | None = None
    use_vllm: bool = True
    models: list[str] = field(default_factory=list)
    kwargs: dict | str | None = None

    def __post_init__(self):
        if self.num_rounds < 1:
            raise RecipeError(None, None, "num_rounds", f"must be >= 1, got {self.num_rounds}")


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_recipe_forms_and_overrides(tmp_path):
    path = _recipe(tmp_path, "# header\nlearning_rate: 1e-4\nnum_rounds: 2\n")
    for argv in ([str(path)], ["--config", str(path)], [f"--config={path}"]):
        assert build(split_argv(argv), Demo).learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string
    demo = build(split_argv([str(path), "--learning-rate", "3e-5", "--num_rounds=5", "--bf16", "--no_use_vllm",
                             "--models", "a", "--models", "b", "--kwargs", '{"x": 1}']), Demo)
    assert (demo.learning_rate, demo.num_rounds, demo.bf16, demo.use_vllm) == (3e-5, 5, True, False)
    assert demo.models == ["a", "b"] and demo.kwargs == '{"x": 1}'
    assert build(split_argv(["--bf16", "false", "--name", "none"]), Demo).bf16 is False
    assert build(split_argv(["--num_rounds", "7", str(path)]), Demo).num_rounds == 7  # flags before the recipe
    assert build(split_argv(["--num_rounds", "7", str(path)]), Demo).learning_rate == 1e-4


def test_errors_name_file_line_and_key(tmp_path):
    path = _recipe(tmp_path, "num_rounds: 2\n\nlearnin_rate: 1\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: field 'learnin_rate': unknown key \(did you mean "
                                          r"'learning_rate'\?\)"):
        build(split_argv([str(path)]), Demo)
    path = _recipe(tmp_path, "num_rounds: two\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:1: field 'num_rounds': expected int, got 'two'"):
        build(split_argv([str(path)]), Demo)
    assert build(split_argv([str(path), "--num_rounds", "4"]), Demo).num_rounds == 4  # the flag replaces it
    with pytest.raises(RecipeError, match=r"r\.yaml: field 'num_rounds': must be >= 1, got 0"):
        build(split_argv([str(path), "--num_rounds", "0"]), Demo)
    with pytest.raises(RecipeError, match=r"^command line: field 'num_rounds': needs a value"):
        build(split_argv(["--num_rounds"]), Demo)
    with pytest.raises(RecipeError, match="--config needs one recipe file"):
        split_argv(["--config"])
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found"):
        split_argv([str(tmp_path / "nope.yaml")])
    bad = _recipe(tmp_path, "a: [1\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:2: not valid YAML"):
        split_argv([str(bad)])


def test_env_block_is_exported(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOIF_DEMO_VAR", raising=False)
    path = _recipe(tmp_path, "env:\n  AUTOIF_DEMO_VAR: 7\nnum_rounds: 1\n")
    build(split_argv([str(path)]), Demo)
    assert os.environ["AUTOIF_DEMO_VAR"] == "7"


def test_flag_errors_are_one_line_exit_2(capsys):
    parser = ArgumentParser(prog="autoif demo")
    parser.add_argument("--workers", type=positive(int), default=2)

    def main(argv):
        parser.parse_args(argv)
        return 0

    assert run_command("autoif demo", main, ["--workers", "0"]) == 2
    assert run_command("autoif demo", main, ["--wrokers", "3"]) == 2
    assert capsys.readouterr().err.splitlines() == ["autoif demo: error: argument --workers: must be > 0, got 0",
                                                    "autoif demo: error: unrecognized arguments: --wrokers 3"]


def test_a_message_over_several_lines_is_reported_on_one(capsys):
    def main(argv):
        raise InputError("f.jsonl", 3, "x", "first part\n  second part")

    assert run_command("autoif demo", main, []) == 2
    assert capsys.readouterr().err.splitlines() == ["autoif demo: error: f.jsonl:3: field 'x': first part second part"]
