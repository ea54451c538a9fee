"""Memory planning: will a recipe fit its GPUs, which term breaks it, and which settings would fix it.

    from autoif_train.planning import check_fits
    plan = check_fits(script_args, training_args, model_args)   # before any weights are loaded
    require_fit(plan, force=force)      # DoesNotFitError (a RecipeError: one line, exit 2) unless it fits or --force

`autoif plan RECIPE.yaml` (autoif_train/plan.py) prints the same plan as a table.
"""

from autoif_train.planning.inputs import DoesNotFitError, check_fits, parse_memory, plan_recipe, require_fit
from autoif_train.planning.memory import GiB, Hardware, Plan, Settings, plan_memory
from autoif_train.planning.model_shape import ModelShape, PlanInputError, resolve_shape
from autoif_train.planning.report import render

__all__ = [
    "DoesNotFitError", "GiB", "Hardware", "ModelShape", "Plan", "PlanInputError", "Settings", "check_fits",
    "parse_memory", "plan_memory", "plan_recipe", "render", "require_fit", "resolve_shape",
]
