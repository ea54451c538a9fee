"""The `autoif` command: one subcommand per job, each a thin call into that job's entry module.

Usage:
    autoif train recipes/quickstart/online_dpo.yaml               # single process; use launch.sh for multi-GPU
    autoif plan recipes/llama3-70b/online_dpo.yaml               # per-GPU memory plan before launching
    autoif synth recipes/synth/quickstart.yaml [--field value ...]
    autoif verify --verifiers V.jsonl --responses R.jsonl --out O.jsonl
    autoif eval --model PATH --benchmarks ifeval,verifiers --output_dir DIR
    autoif models prepare smollm2-135m-instruct
    autoif quickstart --output_dir runs/quickstart
    autoif report runs/quickstart
    autoif bundle --check                                         # the verifier bundle's derived files

Every entry module exposes `cli(argv)`; `python -m autoif_train.<module>` runs the same code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# subcommand -> (entry module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("autoif_train.quickstart", "Run the whole AutoIF loop on the embedded SmolLM2 model on CPU."),
    "train": ("autoif_train.train", "Train a recipe: stage sft | dpo | online_dpo | grpo."),
    "plan": ("autoif_train.plan", "Per-GPU memory plan of a recipe: does it fit, what breaks it, what fixes it."),
    "synth": ("autoif_train.synthesize", "Synthesize verified SFT / DPO / online-DPO data from seed instructions."),
    "verify": ("autoif_train.verify", "Score responses with verifier functions in the sandboxed pool."),
    "eval": ("autoif_train.evaluate", "Evaluate checkpoints on IFEval, IFBench and held-out verifier pass rate."),
    "models": ("autoif_train.models", "Prepare the embedded default model (SmolLM2-135M-Instruct) offline."),
    "report": ("autoif_train.report", "Plots and a markdown summary of an online-DPO or GRPO run from its logs."),
    "bundle": ("autoif_train.bundle", "Check or rebuild the verifier bundle's derived files; cross-validate it."),
}


def available() -> dict[str, tuple[str, str]]:
    """Subcommands whose entry module is present in this install (only these are advertised)."""
    return {name: spec for name, spec in SUBCOMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def _usage(commands) -> str:
    width = max(len(n) for n in commands) if commands else 0
    lines = ["usage: autoif <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in commands.items()]
    lines += ["", "Run `autoif <command> --help` for the options of one command; add --debug to any command to see",
              "the traceback behind an error message."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    if not argv:
        print(_usage(commands), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    if argv[0] in ("-V", "--version"):
        from autoif_train import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"autoif: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    result = module.cli(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
