"""Synthesize AutoIF data: seed instructions -> verified SFT, offline-DPO and online-DPO data.

Usage:
    autoif synth --config recipes/synth/quickstart.yaml [--output_dir DIR] [--from-stage S]
    python -m autoif_train.synthesize --config recipes/synth/quickstart.yaml

Re-running the same command skips finished stages and finished chunks of the stage in progress;
`--from-stage S` redoes S and every later stage. Writes `DIR/report.json` (per stage: rows in, rows out, drops
by reason) and prints the same table. Stages: instructions, verifier_generation, cross_validation,
back_translation, queries, responses, quality, decontamination, export.
"""

from __future__ import annotations

import argparse
import sys

from autoif_train.configs import RecipeError
from autoif_train.synth.artifacts import SynthError
from autoif_train.synth.config import load_synth_config
from autoif_train.synth.pipeline import STAGES, run_pipeline


def main(config_path: str | None, output_dir: str | None = None, from_stage: str | None = None,
         overrides: dict | None = None) -> dict:
    """Run or resume the pipeline described by the recipe; returns the report."""
    config = load_synth_config(config_path, {**(overrides or {}), "output_dir": output_dir})
    return run_pipeline(config, from_stage=from_stage)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoif synth", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Synthesis recipe YAML (keys = SynthConfig fields).")
    parser.add_argument("--output_dir", "--output-dir", default=None, help="Run folder (overrides the recipe).")
    parser.add_argument("--from-stage", "--from_stage", dest="from_stage", choices=STAGES, default=None,
                        help="Redo this stage and all later ones.")
    args = parser.parse_args(argv)
    try:
        main(args.config, args.output_dir, args.from_stage)
    except (SynthError, RecipeError) as err:
        print(f"autoif synth: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
