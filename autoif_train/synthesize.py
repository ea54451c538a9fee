"""Synthesize AutoIF data: seed instructions -> verified SFT, offline-DPO and online-DPO data.

Usage:
    autoif synth [--config] recipes/synth/quickstart.yaml [--field value ...] [--from-stage S]
    autoif synth recipes/synth/quickstart.yaml --temperature 0.7 --output_dir runs/synth-b
    python -m autoif_train.synthesize --config recipes/synth/quickstart.yaml

Keys and flags are `SynthConfig` fields (`autoif synth --help`); every input file is checked before stage 1.
Re-running the same command skips finished stages and finished chunks of the stage in progress (it says so);
`--from-stage S` redoes S and every later stage. Writes `DIR/report.json` (per stage: rows in, rows out, drops
by reason) and prints the same table. Stages: instructions, verifier_generation, cross_validation,
back_translation, queries, responses, quality, decontamination, export.
"""

from __future__ import annotations

import sys

from autoif_train.core.errors import RecipeError, run_command
from autoif_train.core.recipes import Recipe, field_help, split_argv
from autoif_train.synth.config import SynthConfig, check_inputs, load_synth_config

ALIASES = {"temperature": "response_temperature", "out": "output_dir"}


def main(config_path: str | None, output_dir: str | None = None, from_stage: str | None = None,
         overrides: dict | None = None, recipe: Recipe | None = None) -> dict:
    """Run or resume the pipeline described by the recipe; returns the report."""
    from autoif_train.synth.artifacts import RunFolder
    from autoif_train.synth.pipeline import STAGES, run_pipeline

    config = load_synth_config(config_path, {**(overrides or {}), "output_dir": output_dir}, recipe=recipe)
    if from_stage is not None and from_stage not in STAGES:
        raise RecipeError(None, None, "from_stage", f"unknown stage {from_stage!r}; stages are {', '.join(STAGES)}")
    check_inputs(config, config_path or (recipe.path if recipe else None))
    done = [s for s in STAGES if RunFolder(config.output_dir).is_done(s)] if from_stage is None else []
    if done:
        print(f"resuming {config.output_dir}: {len(done)} of {len(STAGES)} stages finished ({', '.join(done)}); "
              "use --from-stage S to redo one")
    return run_pipeline(config, from_stage=from_stage)


def synth_help() -> str:
    return "\n".join([__doc__.split("\n\n")[1].replace("Usage:", "usage:"), "", "fields:",
                      *field_help(SynthConfig), "", "aliases: --temperature = --response_temperature"])


def _run(argv: list[str]) -> int:
    recipe = split_argv(argv)
    if recipe.help or recipe.help_all:
        print(synth_help())
        return 0
    from_stage = recipe.overrides.pop("from_stage", None)
    for key in list(recipe.overrides):
        if key in ALIASES:
            recipe.overrides[ALIASES[key]] = recipe.overrides.pop(key)
    if recipe.path is None:
        raise RecipeError(None, None, None, "give a synthesis recipe: autoif synth RECIPE.yaml [--field value ...]")
    main(recipe.path, from_stage=from_stage, recipe=recipe)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_command("autoif synth", _run, argv)


if __name__ == "__main__":
    sys.exit(cli())
