"""`SandboxArgs`: the verifier-pool settings every command shares (recipe keys `verifier_workers`,
`verifier_timeout`, `isolation`), checked when the recipe or flags are parsed, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoif_train.core.errors import RecipeError
from autoif_train.sandbox.lockdown import ISOLATION_MODES


@dataclass
class SandboxArgs:
    """How verifier functions are run: the sandboxed pool's size, per-call time limit and isolation."""

    verifier_workers: int = field(default=2, metadata={"help": "Sandboxed verifier worker processes."})
    verifier_timeout: float = field(default=1.0, metadata={"help": "Seconds per verifier call."})
    isolation: str = field(default="seccomp", metadata={"help": "seccomp | bwrap | none (rlimits only: unsafe)."})

    def __post_init__(self):
        self.check_sandbox()

    def check_sandbox(self) -> None:
        """Raise `RecipeError` naming the field for a value the pool would refuse later."""
        if not isinstance(self.verifier_workers, int) or self.verifier_workers < 1:
            raise RecipeError(None, None, "verifier_workers", f"must be >= 1, got {self.verifier_workers!r}")
        if not isinstance(self.verifier_timeout, (int, float)) or self.verifier_timeout <= 0:
            raise RecipeError(None, None, "verifier_timeout", f"must be > 0, got {self.verifier_timeout!r}")
        if self.isolation not in ISOLATION_MODES:
            raise RecipeError(None, None, "isolation", f"must be one of {', '.join(ISOLATION_MODES)}, got "
                                                       f"{self.isolation!r}")

    def pool(self):
        """A `VerifierPool` with these settings (use it as a context manager)."""
        from autoif_train.sandbox.pool import VerifierPool

        return VerifierPool(workers=self.verifier_workers, timeout=self.verifier_timeout, isolation=self.isolation)
