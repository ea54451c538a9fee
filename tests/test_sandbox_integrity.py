"""Integrity tests of the verifier sandbox: a verifier decides only its own results, leaves nothing behind on the
host, reads only what it needs, and cannot slow the pool.

Run: python -m pytest tests/test_sandbox_integrity.py -q

Each attack runs with one worker, between honest calls in the same `run` (and before a later one), where a shared
worker would let it reach them: the honest verifier's results must stay correct, with no strike against it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import pytest

from autoif_train.sandbox import VerifierPool, code_hash

REPO_ROOT = Path(__file__).resolve().parent.parent
HONEST = (
    "import re\n\ndef evaluate(response):\n    return re.search(r'\\d', response) is not None and len(response) < 50\n"
)
# the same check, slow enough (~1 ms a call) that a thread left behind gets the GIL while it runs
HONEST_SLOW = (
    "import re\n\ndef evaluate(response):\n    for _ in range(3000):\n        found = re.search(r'\\d', response)\n"
    "    return found is not None and len(response) < 50\n"
)
RESPONSES = ["abc 1", "no digits", "x" * 60 + "1", "7"]
EXPECTED = [True, False, False, True]
LOWER = "def evaluate(response):\n    return response == response.lower()\n"


def assert_contained(attacker: str, honest: str = HONEST, repeat: int = 1) -> None:
    """Honest calls before and after the attacker's in one run, then again: all correct, the honest one unharmed."""
    honest_calls = [(honest, r) for r in RESPONSES] * repeat
    with VerifierPool(workers=1, timeout=1.0, grace=0.5) as p:
        for _ in range(2):
            results = p.run(honest_calls + [(attacker, "x")] + honest_calls)
            n = len(honest_calls)
            assert results[:n] == EXPECTED * repeat, "honest results before the attacker changed"
            assert results[n + 1 :] == EXPECTED * repeat, "honest results after the attacker changed"
        assert p.run(honest_calls) == EXPECTED * repeat
        assert code_hash(honest) not in p.strikes and code_hash(honest) not in p.disabled


def test_monkeypatched_stdlib_and_builtins_stay_private():
    assert_contained(
        "import re, builtins\nre.search = lambda *a, **k: None\nbuiltins.len = lambda x: 0\n"
        "def evaluate(response):\n    return True\n"
    )


def test_swapped_code_of_another_verifier_stays_private():
    assert_contained(
        "import gc\n\ndef evaluate(response):\n    for f in gc.get_objects():\n"
        "        if type(f) is type(evaluate) and f.__name__ == 'evaluate' and f is not evaluate:\n"
        "            f.__code__ = (lambda response: False).__code__\n    return True\n"
    )


ATTACK_FRAMES = """
def spoil(frame):
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
                value[:] = [b"false\\n"] * len(value)
            elif isinstance(value, bytearray):
                value[:] = b"0" * len(value)
        frame = frame.f_back
"""


def test_unsent_results_cannot_be_rewritten_through_frames():
    assert_contained(
        "import sys\n" + ATTACK_FRAMES + "\ndef evaluate(response):\n    spoil(sys._getframe(1))\n    return True\n"
    )


def test_forged_writes_to_every_fd_reach_no_other_verifier():
    assert_contained(
        "import os\n\ndef evaluate(response):\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'false\\n' * 4 + b'0000')\n        except OSError:\n            pass\n"
        "    return True\n"
    )


def test_thread_left_running_reaches_no_later_call():
    attacker = (
        "import re, sys, threading, time\n" + ATTACK_FRAMES + "\ndef loop():\n    end = time.monotonic() + 3\n"
        "    while time.monotonic() < end:\n        re.search = lambda *a, **k: None\n"
        "        for frame in list(sys._current_frames().values()):\n            spoil(frame)\n"
        "        time.sleep(0.0005)\n\n"
        "def evaluate(response):\n    threading.Thread(target=loop, daemon=True).start()\n    return True\n"
    )
    assert_contained(attacker, honest=HONEST_SLOW, repeat=15)


def test_forged_timeouts_and_progress_cannot_strike_an_honest_verifier():
    forged_timeouts = (
        "import os\n\ndef evaluate(response):\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'\"timeout\"\\n' * 6)\n        except OSError:\n            pass\n"
        "    return True\n"
    )
    shifted_counter_then_crash = (
        "import os, sys\n\ndef evaluate(response):\n    try:\n"
        "        counter = sys.modules['autoif_train.sandbox.worker']._progress\n        counter[0] = counter[0] - 3\n"
        "    except Exception:\n        pass\n    os._exit(1)\n"
    )
    assert_contained(forged_timeouts)
    assert_contained(shifted_counter_then_crash)


# ------------------------------------------------------------------ nothing left behind on the host


def _sysv_ids() -> set[tuple[str, str]]:
    ids = set()
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            ids |= {(kind, line.split()[1]) for line in f.read().splitlines()[1:] if line.strip()}
    return ids


@pytest.mark.skipif(not os.path.exists("/proc/sysvipc/shm"), reason="no /proc/sysvipc")
def test_no_sysv_or_posix_ipc_object_outlives_the_run():
    mq_name = f"/autoif-sandbox-test-{os.getpid()}".encode()
    body = (
        "import ctypes, os\n\ndef evaluate(response):\n    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    made = [libc.shmget(0, 1 << 20, 0o1600), libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600)]\n"
        f"    made.append(libc.mq_open({mq_name!r}, os.O_CREAT | os.O_RDWR, 0o600, None))\n"
        "    return any(m >= 0 for m in made)\n"
    )
    before = _sysv_ids()
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        with VerifierPool(workers=1, timeout=1.0) as p:
            assert p.run([(body, "x"), (LOWER, "ok")]) == [False, True]
        left = _sysv_ids() - before
        assert not left, f"SysV IPC objects left behind: {sorted(left)}"
    finally:
        rm = {"shm": libc.shmctl, "msg": libc.msgctl, "sem": libc.semctl}
        for kind, ident in _sysv_ids() - before:
            rm[kind](int(ident), 0, None)  # IPC_RMID
        mq_left = libc.mq_unlink(mq_name) == 0
    assert not mq_left, "a POSIX message queue was left behind"


def test_worker_limits_processes_and_threads():
    with VerifierPool(workers=1, timeout=1.0) as p:
        w = p._workers[0]
        with open(f"/proc/{w.proc.pid}/limits") as f:
            nproc = next(line.split()[2] for line in f if line.startswith("Max processes"))
        if os.geteuid() == 0:  # RLIMIT_NPROC binds the sandbox uid (nobody), not root
            assert nproc == "256"
        if p.cgroups:
            assert Path(w.cgroup, "pids.max").read_text().strip() == str(p.max_tasks)
            with open(f"/proc/{w.proc.pid}/cgroup") as f:
                assert any(line.rstrip().endswith(os.path.basename(w.cgroup)) for line in f)
        threads = "import threading, time\n\ndef evaluate(response):\n    n = 0\n    for _ in range(200):\n" \
                  "        try:\n            threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n" \
                  "            n += 1\n        except RuntimeError:\n            break\n    return n < 200\n"  # fmt: skip
        assert p.run([(threads, "x"), (LOWER, "ok")]) == [True, True]


# ------------------------------------------------------------------ reads only where needed


def test_checkout_outputs_venv_and_site_packages_are_unreadable():
    secret_dir = REPO_ROOT / "outputs" / f"sandbox-test-{os.getpid()}"
    secret_dir.mkdir(parents=True, exist_ok=True)
    secret = secret_dir / "token"
    secret.write_text("hunter2")
    for path in (REPO_ROOT / "outputs", secret_dir):
        path.chmod(0o755)
    secret.chmod(0o644)

    def reads(path: Path) -> str:
        return f"def evaluate(response):\n    return len(open({str(path)!r}, 'rb').read()) >= 0\n"

    targets = [secret, REPO_ROOT / "README.md", REPO_ROOT / ".git" / "HEAD", Path(sys.prefix) / "pyvenv.cfg"]
    targets = [t for t in targets if t.exists()]
    calls = [(reads(t), "x") for t in targets]
    calls.append(("import tqdm\n\ndef evaluate(response):\n    return True\n", "x"))  # site-packages
    calls.append(("import csv, decimal, fractions\n\ndef evaluate(response):\n    return True\n", "x"))  # stdlib
    try:
        with VerifierPool(workers=1, timeout=1.0) as p:
            assert p.run(calls) == [None] * (len(calls) - 1) + [True]
    finally:
        secret.unlink()
        secret_dir.rmdir()


# ------------------------------------------------------------------ cannot slow the pool


def test_slow_verifier_is_disabled_and_honest_ones_keep_their_speed():
    honest = [f"def evaluate(response):\n    return len(response) > {i}\n" for i in range(8)]
    slow = "import time\n\ndef evaluate(response):\n    time.sleep(0.45)\n    return True\n"
    responses = [str(i) * (i % 12) for i in range(24)]
    honest_calls = [(code, r) for r in responses for code in honest]
    expected = [len(r) > i for r in responses for i in range(8)]
    with VerifierPool(workers=2, timeout=0.5) as p:
        p.run(honest_calls)  # warm
        start = time.monotonic()
        assert p.run(honest_calls) == expected
        alone = time.monotonic() - start
        start = time.monotonic()
        results = p.run([(slow, r) for r in responses] + honest_calls)
        mixed = time.monotonic() - start
        assert results[len(responses) :] == expected
        assert p.disabled.get(code_hash(slow), "").startswith("slow")
        assert not any(code_hash(c) in p.disabled or code_hash(c) in p.strikes for c in honest)
        # the slow one ran two calls (~0.9 s) on one worker before it was cut; the rest waited for nothing
        assert mixed < alone + 1.5, f"{mixed:.2f} s with a slow verifier vs {alone:.2f} s without"
        assert results[: len(responses)].count(True) <= 2


# ------------------------------------------------------------------ degrade, never raise


def test_failing_to_start_a_worker_degrades_to_none():
    with VerifierPool(workers=1, timeout=0.5, recycle_after=4) as p:
        assert p.run([(LOWER, "a")] * 4) == [True] * 4  # the worker asks to be replaced after these
        good, p._cmd = p._cmd, [sys.executable, "-c", "import sys; sys.exit(3)"]
        assert p.run([(LOWER, "a"), (LOWER, "B")]) == [None, None]  # no replacement could start: None, no raise
        assert code_hash(LOWER) in p.unavailable
        assert code_hash(LOWER) not in p.disabled and code_hash(LOWER) not in p.strikes
        p._cmd = good
        assert p.run([(LOWER, "a"), (LOWER, "B")]) == [True, False]  # and it recovers when it can


def test_failing_to_start_a_verifier_process_degrades_to_none():
    with VerifierPool(workers=1, timeout=0.5, max_tasks=1) as p:  # the zygote alone fills its pids cgroup
        if not p.cgroups:
            pytest.skip("no pids cgroup can be made here")
        assert p.run([(LOWER, "a"), (HONEST, "1")]) == [None, None]
        assert {code_hash(LOWER), code_hash(HONEST)} <= set(p.unavailable)
        assert "cannot start a verifier process" in p.unavailable[code_hash(LOWER)]
        assert not p.strikes and not p.disabled
