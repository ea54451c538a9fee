"""Run untrusted, LLM-written verifier functions `evaluate(response) -> bool` isolated and fast.

    from autoif_train.sandbox import VerifierPool
    with VerifierPool(workers=2, timeout=1.0, isolation="seccomp") as pool:
        results = pool.run([(code, response), ...])   # -> [True | False | None, ...] in input order

Verifier code never runs in the calling process: each verifier runs in a process of its own, forked from a
locked-down zygote worker (started with `subprocess`, never forked from the caller); see `lockdown.py` for what is
and is not covered. `pool.disabled` and `pool.unavailable` report verifiers that were cut off or could not run.
Result semantics are in `scoring.py`; scores
(pass rates) are `autoif_train.rewards.verifier_code`, the only scoring path.
"""

from autoif_train.sandbox.lockdown import ISOLATION_MODES, IsolationUnavailable, check_isolation
from autoif_train.sandbox.pool import SandboxError, VerifierPool, code_hash
from autoif_train.sandbox.scoring import coerce_result

__all__ = [
    "ISOLATION_MODES",
    "IsolationUnavailable",
    "SandboxError",
    "VerifierPool",
    "check_isolation",
    "code_hash",
    "coerce_result",
]
