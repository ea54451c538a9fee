"""Plan a recipe's per-GPU memory before launching it: will it fit, what breaks it, which settings fix it.

Usage:
    autoif plan recipes/llama3-70b/online_dpo.yaml
    autoif plan recipes/llama3-8b/online_dpo.yaml --nodes 1 --gpus-per-node 8 --gpu-memory 80GB
    autoif plan RECIPE.yaml --model-config path/to/config.json [--vllm_tensor_parallel_size 8 ...]
    python -m autoif_train.plan RECIPE.yaml

Reads the recipe with the training parser, the accelerate config it names (`accelerate_config:`) for the ZeRO stage
and the GPU count, and the model's config.json (a local folder, `--model-config`, or the configs shipped for the
paper models). Other `--field value` flags override recipe fields, as in `autoif train`. Prints a table of policy
parameters, gradients, optimizer state, reference model, activations, vLLM or transformers sampling memory per GPU,
the sampling topology and a rough round time. Exit code: 0 fits, 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from autoif_train.core.errors import run_command
from autoif_train.core.recipes import ArgumentParser

EXIT_FITS, EXIT_DOES_NOT_FIT = 0, 1  # bad input: 2, as every command (`core.errors.EXIT_BAD_INPUT`)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="autoif plan", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("recipe", help="training recipe YAML")
    parser.add_argument("--nodes", type=int, help="nodes (default: the accelerate config's num_machines)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: from the accelerate config)")
    parser.add_argument("--gpu-memory", default="80GB", help="memory per GPU, e.g. 80GB, 141GB (read as GiB)")
    parser.add_argument("--model-config", help="the model's config.json (when the model is neither local nor shipped)")
    parser.add_argument("--accelerate-config", help="override the recipe's accelerate_config (name or path)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="assumed prompt length in tokens")
    parser.add_argument("--margin", type=float, default=0.05, help="share of GPU memory kept free (default 0.05)")
    parser.add_argument("--gpu-tflops", type=float, help="dense bf16 TFLOP/s per GPU for the round time (312)")
    parser.add_argument("--hbm-tbps", type=float, help="GPU memory bandwidth in TB/s for the round time (2.0)")
    return parser


def _import_deepspeed_quietly() -> None:
    """DeepSpeed logs its accelerator choice to stdout on import: bind its log handler to stderr in this process."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        try:
            import deepspeed.runtime.zero.stage3  # noqa: F401
        except ImportError:
            pass  # the planner falls back to its copy of DeepSpeed's formulas


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    """Print the plan for `args.recipe`; return the exit code (0 fits, 1 does not fit)."""
    from autoif_train.planning import PlanInputError, parse_memory, plan_recipe, render

    _import_deepspeed_quietly()

    if not 0 <= args.margin < 1:
        raise PlanInputError(f"--margin must be in [0, 1), got {args.margin}")
    if args.prompt_tokens <= 0:
        raise PlanInputError(f"--prompt-tokens must be positive, got {args.prompt_tokens}")
    plan = plan_recipe(
        args.recipe, nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_memory=parse_memory(args.gpu_memory),
        model_config=args.model_config, accelerate_config=args.accelerate_config, prompt_tokens=args.prompt_tokens,
        margin=args.margin, overrides=overrides, gpu_tflops=args.gpu_tflops, hbm_tbps=args.hbm_tbps,
    )
    print(render(plan, args.recipe))
    return EXIT_FITS if plan.fits else EXIT_DOES_NOT_FIT


def cli(argv: list[str] | None = None) -> int:
    def run(argv: list[str]) -> int:
        args, overrides = build_parser().parse_known_args(argv)
        return main(args, overrides)

    return run_command("autoif plan", run, argv)


if __name__ == "__main__":
    sys.exit(cli())
