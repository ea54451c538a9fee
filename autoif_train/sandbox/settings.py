"""`SandboxArgs`: the verifier-pool settings every command shares (recipe keys `verifier_workers`,
`verifier_timeout`, `isolation`), checked when the recipe or flags are parsed, before any model loads.

`host_pool_settings` sizes one process's pool: `verifier_workers: 0` (auto, the default) shares the host's cores
among the job's processes on it (LOCAL_WORLD_SIZE), keeping one core per process for the trainer; the timeout is
stretched by the factor by which the verifier processes on the host outnumber its cores, so a busy host does not turn
slow calls into timeouts (false results). Not protected against: other jobs on the same host, which these counts do
not see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from autoif_train.core.errors import RecipeError
from autoif_train.sandbox.lockdown import ISOLATION_MODES


def host_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_world_size() -> int:
    """Processes of this job on this host (torchrun / accelerate set LOCAL_WORLD_SIZE); 1 when not launched."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def host_pool_settings(workers: int, timeout: float, local_world: int | None = None,
                       cores: int | None = None) -> tuple[int, float]:
    """(workers, timeout) for one process's verifier pool; `workers <= 0` means auto (see the module docstring)."""
    local_world = local_world or local_world_size()
    cores = cores or host_cores()
    if workers <= 0:
        workers = max(1, cores // local_world - 1)
    load = workers * local_world / cores
    return workers, float(timeout) * max(1.0, load)


@dataclass
class SandboxArgs:
    """How verifier functions are run: the sandboxed pool's size, per-call time limit and isolation."""

    verifier_workers: int = field(
        default=0, metadata={"help": "Sandboxed verifier worker processes (per rank); 0 = auto: the host's cores "
                                     "shared by the job's processes on it."})
    verifier_timeout: float = field(
        default=1.0, metadata={"help": "Seconds per verifier call (stretched when the host is oversubscribed)."})
    isolation: str = field(default="seccomp", metadata={"help": "seccomp | bwrap | none (rlimits only: unsafe)."})

    def __post_init__(self):
        self.check_sandbox()

    def check_sandbox(self) -> None:
        """Raise `RecipeError` naming the field for a value the pool would refuse later."""
        if not isinstance(self.verifier_workers, int) or self.verifier_workers < 0:
            raise RecipeError(None, None, "verifier_workers", f"must be >= 0 (0 = auto), got {self.verifier_workers!r}")
        if not isinstance(self.verifier_timeout, (int, float)) or self.verifier_timeout <= 0:
            raise RecipeError(None, None, "verifier_timeout", f"must be > 0, got {self.verifier_timeout!r}")
        if self.isolation not in ISOLATION_MODES:
            raise RecipeError(None, None, "isolation", f"must be one of {', '.join(ISOLATION_MODES)}, got "
                                                       f"{self.isolation!r}")

    def pool_settings(self) -> tuple[int, float]:
        """(workers, timeout) of this process's pool (`host_pool_settings`)."""
        return host_pool_settings(self.verifier_workers, self.verifier_timeout)

    def pool(self):
        """A `VerifierPool` with these settings (use it as a context manager, or call `close()`)."""
        from autoif_train.sandbox.pool import VerifierPool

        workers, timeout = self.pool_settings()
        return VerifierPool(workers=workers, timeout=timeout, isolation=self.isolation)
