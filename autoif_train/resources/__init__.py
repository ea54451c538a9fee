"""Files shipped with the package: the verifier bundle (`verifiers/`), the recipes (`recipes/`), the accelerate
configs (`accelerate_configs/`) and the paper models' configs (`model_configs/`).

In a checkout the first three live at the repository root; a wheel build copies them here (see `setup.py`).
`bundled("verifiers/heldout_prompts.jsonl")` finds the file either way: the installed copy first, else the checkout's.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parents[1]  # the repository root, when running from a checkout
SHIPPED = ("verifiers", "recipes", "accelerate_configs")


def bundled(relative: str | Path) -> Path:
    """The shipped file or folder `relative` (e.g. `recipes/quickstart/online_dpo.yaml`); if neither copy exists,
    the checkout path, so that an error message names the usual place."""
    for root in (PACKAGE_DIR, CHECKOUT_DIR):
        if (root / relative).exists():
            return root / relative
    return CHECKOUT_DIR / relative


def resolve_shipped(path: str | None) -> str | None:
    """A relative path that does not exist from the working directory but names a shipped file (recipes say
    `verifiers/train_prompts.jsonl`) becomes that file's absolute path; anything else is returned unchanged."""
    if not path or Path(path).is_absolute() or Path(path).exists() or Path(path).parts[0] not in SHIPPED:
        return path
    found = bundled(path)
    return str(found) if found.exists() else path
