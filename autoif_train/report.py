"""Plots and a markdown summary of an online-DPO or GRPO run, drawn from the run's own logs.

Usage:
    autoif report runs/quickstart                  # a quickstart folder (adds its held-out before/after)
    autoif report outputs/llama3-8b/online_dpo     # any online_dpo / grpo output_dir
    autoif report RUN_DIR --output_dir DIR         # write report.md and report/*.png into DIR instead
    python -m autoif_train.report RUN_DIR

Online DPO: pass rate per round (sampled and held-out), pairs and prompts with a pair, completion length, clipped
ratio, DPO loss and reward margins, from `rounds.jsonl`. GRPO: reward, completion length, clipped ratio and loss
per step, from `train_log.jsonl`. Logic in `autoif_train.training.run_report`.
"""

from __future__ import annotations

import sys

from autoif_train.core.errors import run_command
from autoif_train.core.recipes import ArgumentParser


def main(run_dir: str, output_dir: str | None = None) -> str:
    """Write the report; return the path of `report.md`."""
    from autoif_train.training.run_report import write_run_report

    path = write_run_report(run_dir, output_dir)
    print(f"wrote {path} and its plots in {path.parent / 'report'}")
    return str(path)


def cli(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="autoif report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run's output_dir (rounds.jsonl or train_log.jsonl) or a quickstart folder")
    parser.add_argument("--output_dir", "--output-dir", "--out", dest="output_dir", default=None,
                        help="where report.md and report/ go (default: RUN_DIR)")

    def run(args: list[str]) -> int:
        parsed = parser.parse_args(args)
        main(parsed.run_dir, parsed.output_dir)
        return 0

    return run_command("autoif report", run, argv)


if __name__ == "__main__":
    sys.exit(cli())
