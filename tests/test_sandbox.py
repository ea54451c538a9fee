"""Adversarial tests of the verifier sandbox: one test per property, each followed by a normal call.

Run: python -m pytest tests/test_sandbox.py -q

After every attack: this (calling) process is alive, the host shows no side effect, the attack's result is None
or False, and the same pool still answers a normal call correctly.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from autoif_train.sandbox import (
    IsolationUnavailable,
    SandboxError,
    VerifierPool,
    check_isolation,
    code_hash,
    lockdown,
)
from autoif_train.sandbox import pool as pool_module

LOWER = "def evaluate(response):\n    return response == response.lower()\n"


def verifier(body: str) -> str:
    """Verifier source whose evaluate() runs `body` (dedented)."""
    return "import os, sys, posix, subprocess\n\ndef evaluate(response):\n" + textwrap.indent(
        textwrap.dedent(body).strip("\n"), "    "
    )


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout=0.5, grace=0.5, isolation="seccomp", max_strikes=100) as p:
        yield p


def assert_healthy(p: VerifierPool) -> None:
    assert p.run([(LOWER, "all lower"), (LOWER, "Not Lower"), (LOWER, "x")]) == [True, False, True]


def attack(p: VerifierPool, body: str, response: str = "r") -> bool | None:
    result = p.run([(verifier(body), response)])[0]
    assert result in (None, False), f"attack returned {result!r}"
    assert_healthy(p)
    return result


# ------------------------------------------------------------------ semantics


def test_result_semantics_and_pass_rate(pool):
    calls = [
        ("def evaluate(r):\n    return len(r) < 5\n", "abc"),
        ("def evaluate(r):\n    return len(r) < 5\n", "abcdefgh"),
        ("def evaluate(r):\n    return 'True'\n", "x"),
        ("def evaluate(r):\n    return ' false '\n", "x"),
        ("def evaluate(r):\n    return 1\n", "x"),
        ("def evaluate(r):\n    return 'yes'\n", "x"),
        ("def evaluate(r):\n    return None\n", "x"),
        ("def evaluate(r):\n    raise ValueError(r)\n", "x"),
        ("x = 1\n", "no evaluate defined"),
        ("raise RuntimeError('module body fails')\ndef evaluate(r):\n    return True\n", "x"),
    ]
    assert pool.run(calls) == [True, False, True, False, None, None, None, None, None, None]


def test_verifier_code_reward_groups_results_per_response(pool):
    from autoif_train.rewards import VerifierCodeReward

    short = "def evaluate(r):\n    return len(r) < 5\n"
    broken = "def evaluate(r):\n    return r[1000]\n"
    rows = [[LOWER, short], [LOWER, short, broken], [broken], []]
    scores = VerifierCodeReward(pool).score(rows, ["abc", "ABCDEFG", "x", "y"])
    assert scores.results == [[True, True], [False, False, None], [None], []]
    assert scores.pass_rates == [1.0, 0.0, None, None]  # no bool result: unscored
    assert scores.rates(0.0) == [1.0, 0.0, 0.0, 0.0]  # AutoIF's code: all errors -> 0.0
    assert VerifierCodeReward(pool).score([[LOWER, short]], ["Ab"]).pass_rates == [0.5]


def test_order_preserved_across_batches_and_workers(pool):
    codes = [
        "def evaluate(r):\n    return r.count('a') >= 2\n",
        "def evaluate(r):\n    return len(r.split()) < 4\n",
        "import re\ndef evaluate(r):\n    return re.search(r'\\d', r) is not None\n",
        "def evaluate(r):\n    return 'true' if r.endswith('!') else 'false'\n",
    ]
    responses = [("a " * (i % 5)) + ("word " * (i % 7)) + (str(i) if i % 3 else "") + ("!" if i % 2 else "")
                 for i in range(150)]  # fmt: skip
    calls = [(c, r) for r in responses for c in codes]
    expected = []
    for r in responses:  # trusted reference, evaluated here on purpose: these codes are written by the test
        expected += [r.count("a") >= 2, len(r.split()) < 4, any(ch.isdigit() for ch in r), r.endswith("!")]
    assert pool.run(calls, progress=True) == expected


def test_syntax_error(pool):
    assert pool.run([("def evaluate(response:\n    return True\n", "x")]) == [None]
    assert_healthy(pool)


def test_bad_call_type_is_a_clear_error(pool):
    with pytest.raises(TypeError, match="call 1"):
        pool.run([(LOWER, "a"), (LOWER, 3)])


# ------------------------------------------------------------------ hangs


def test_infinite_loop(pool):
    assert attack(pool, "while True:\n    pass") is None


def test_loop_swallowing_base_exception_is_killed_by_watchdog(pool):
    timeouts = pool.stats["timeouts"]
    body = """
    while True:
        try:
            while True:
                try:
                    while True:
                        pass
                except BaseException:
                    pass
        except BaseException:
            pass
    """
    assert attack(pool, body) is None
    body_ignore = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    assert attack(pool, body_ignore) is None
    assert pool.stats["timeouts"] == timeouts + 2  # each verifier process was killed at its call's deadline


@pytest.mark.parametrize("batch_size", [64, 2])  # one batch; several batches in flight per worker
def test_watchdog_and_crash_requeue_the_rest_of_the_batch(batch_size):
    hang = verifier("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass")
    crash = verifier("os._exit(3)")
    calls = [(LOWER, "a"), (hang, "x"), (LOWER, "B"), (crash, "x"), (LOWER, "c"), (LOWER, "D"), (LOWER, "e")]
    with VerifierPool(workers=1, timeout=0.2, grace=0.3, batch_size=batch_size) as p:
        assert p.run(calls) == [True, None, False, None, True, False, True]
        assert p.stats["timeouts"] == 1 and p.stats["crashes"] == 1 and p.stats["restarts"] == 0
        assert p.strikes == {code_hash(hang): 1, code_hash(crash): 1}


def test_busy_thread_and_ignored_alarm_cannot_keep_a_stuck_verifier_alive():
    body = """
    import signal, threading
    def tick():
        while True:
            pass
    threading.Thread(target=tick, daemon=True).start()
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass
    """
    with VerifierPool(workers=1, timeout=0.2, grace=0.3) as p:
        assert p.run([(LOWER, "a"), (verifier(body), "x"), (LOWER, "B")]) == [True, None, False]
        # killed by its zygote at its own call's deadline; only the culprit got the strike
        assert p.stats["timeouts"] == 1 and p.stats["restarts"] == 0
        assert p.strikes == {code_hash(verifier(body)): 1}


def test_concurrent_callers_get_their_own_results(pool):
    import threading

    out = {}

    def call(n):
        out[n] = pool.run([(LOWER, "abc" if (n + i) % 2 else "ABC") for i in range(200)])

    threads = [threading.Thread(target=call, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(3):
        assert out[n] == [bool((n + i) % 2) for i in range(200)]


def test_sleep_in_module_body_times_out(pool):
    assert pool.run([("import time\ntime.sleep(60)\ndef evaluate(r):\n    return True\n", "x")]) == [None]
    assert_healthy(pool)


def test_repeated_timeouts_disable_the_verifier():
    loop = "def evaluate(r):\n    while True:\n        pass\n"
    with VerifierPool(workers=1, timeout=0.2, grace=0.3, max_strikes=2, batch_size=4) as p:
        results = p.run([(loop, str(i)) for i in range(8)] + [(LOWER, "ok")])
        assert results == [None] * 8 + [True]
        # two strikes, then disabled: the other 6 calls never ran (a call killed right at its deadline may be
        # reported as a crash rather than a timeout; both are strikes)
        assert p.stats["timeouts"] + p.stats["crashes"] == 2 and p.stats["timeouts"] >= 1
        assert code_hash(loop) in p.disabled
        assert code_hash(LOWER) not in p.disabled
        assert p.run([(loop, "again")]) == [None]


# ------------------------------------------------------------------ processes, signals, exit


@pytest.mark.parametrize(
    "body",
    [
        "return os.system('touch {marker}') == 0",
        "return posix.system('touch {marker}') == 0",
        "return subprocess.run(['touch', '{marker}']).returncode == 0",
        "os.execv('/usr/bin/touch', ['touch', '{marker}'])",
    ],
    ids=["os.system", "posix.system", "subprocess", "execv"],
)
def test_no_new_processes(pool, tmp_path, body):
    marker = tmp_path / "pwned"
    attack(pool, body.format(marker=marker))
    assert not marker.exists()


def test_fork_bomb(pool):
    body = """
    n = 0
    for _ in range(300):
        try:
            if os.fork() == 0:
                while True:
                    pass
            n += 1
        except OSError:
            pass
    return n > 0
    """
    assert attack(pool, body) is False
    assert _forked_by_verifiers(pool) == 0


def _forked_by_verifiers(p: VerifierPool) -> int:
    """Live processes whose parent is a verifier process (a child of a zygote)."""
    parents: dict[str, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            parents[entry] = (state, ppid)
    zygotes = {str(w.proc.pid) for w in p._workers}
    verifiers = {pid for pid, (_, ppid) in parents.items() if ppid in zygotes}
    return sum(ppid in verifiers and state not in "ZX" for state, ppid in parents.values())


def test_cannot_kill_the_parent(pool):
    attack(pool, "os.kill(os.getppid(), 9)")
    attack(pool, "os.killpg(os.getpgid(os.getppid()), 9)")
    assert os.getpid() > 0  # still here; also the worker cannot kill its siblings:
    attack(pool, "import signal\nfor pid in range(2, 4000000, 1):\n    os.kill(pid, 0)\n")


@pytest.mark.parametrize("body", ["sys.exit(0)", "raise SystemExit(1)", "os._exit(0)", "os.abort()"])
def test_exit_calls(pool, body):
    assert attack(pool, body) is None


def test_deep_recursion(pool):
    assert attack(pool, "def f(n):\n    return f(n + 1)\nreturn f(0)") is None
    # a raised recursion limit overflows the C stack: the worker dies, the call is None, the pool recovers
    assert attack(pool, "sys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nreturn f(0)") is None


# ------------------------------------------------------------------ network, memory, filesystem, secrets


def test_tcp_connect_to_local_listener(pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        body = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.2)\nreturn True"
        assert attack(pool, body) is None
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_huge_allocation(pool):
    assert attack(pool, "x = bytearray(10 * 1024**3)\nreturn True") is None
    assert attack(pool, "x = [0] * (10 * 1024**3 // 8)\nreturn True") is None


def test_write_delete_rename_files(pool, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    os.chmod(tmp_path, 0o777)
    os.chmod(keep, 0o666)
    attack(pool, f"open('{tmp_path}/new.txt', 'w').write('x')\nreturn True")
    attack(pool, f"open('{keep}', 'a').write('appended')\nreturn True")
    attack(pool, f"open('{keep}', 'w').close()\nreturn True")
    attack(pool, f"os.remove('{keep}')\nreturn True")
    attack(pool, f"os.rename('{keep}', '{tmp_path}/moved.txt')\nreturn True")
    attack(pool, f"os.mkdir('{tmp_path}/d')\nreturn True")
    attack(pool, f"os.chmod('{keep}', 0o000)\nreturn True")
    attack(pool, "import tempfile\ntempfile.mkstemp()\nreturn True")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert keep.read_text() == "original"
    assert keep.stat().st_mode & 0o777 == 0o666


def test_environment_and_caller_files_are_hidden(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOIF_TEST_SECRET", "hunter2")
    secret_file = tmp_path / "token"
    secret_file.write_text("hunter2")
    secret_file.chmod(0o644)
    with VerifierPool(workers=1, timeout=0.5) as p:
        checks = [
            "return 'hunter2' in repr(dict(os.environ))",
            "return 'hunter2' in open(f'/proc/{os.getppid()}/environ', 'rb').read().decode(errors='replace')",
            f"return 'hunter2' in open('{secret_file}').read()",
            "return len(os.listdir(os.path.expanduser('~'))) >= 0 and os.path.expanduser('~') != '/'",
        ]
        for body in checks:
            attack(p, body)


def test_extra_read_paths_are_readable_and_still_read_only(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "words.txt").write_text("banana")
    read = verifier(f"return open('{data}/words.txt').read() == 'banana'")
    write = verifier(f"open('{data}/words.txt', 'w').write('x')\nreturn True")
    with VerifierPool(workers=1, timeout=0.5) as p:
        assert p.run([(read, "x")]) == [None]
    with VerifierPool(workers=1, timeout=0.5, extra_read_paths=[str(data)]) as p:
        assert p.run([(read, "x"), (write, "x"), (read, "x")]) == [True, None, True]
    assert (data / "words.txt").read_text() == "banana"


# ------------------------------------------------------------------ what comes back


def test_return_value_that_would_run_code_when_unpickled(pool, tmp_path):
    marker = tmp_path / "unpickled"
    body = f"""
    class Evil:
        def __reduce__(self):
            return (posix.system, ('touch {marker}',))
        def __bool__(self):
            return True
    return Evil()
    """
    assert attack(pool, body) is None
    assert not marker.exists()


def test_huge_return_value_and_output(pool):
    assert attack(pool, "return 'x' * (200 * 1024**2)") is None
    assert pool.run([(verifier("print('y' * 10**6)\nsys.stderr.write('z' * 10**6)\nreturn True"), "r")]) == [True]
    assert_healthy(pool)


def test_forged_channel_output_kills_the_worker(pool):
    body = "for fd in range(3, 20):\n    try:\n        os.write(fd, b'garbage that is not a result\\n')\n" \
           "    except OSError:\n        pass\nreturn True"  # fmt: skip
    pool.run([(verifier(body), "r")])
    assert_healthy(pool)


def test_threads_are_allowed_and_leftover_threads_die_with_their_process(pool):
    body = """
    import threading
    out = []
    t = threading.Thread(target=lambda: out.append(response.upper()))
    t.start(); t.join()
    threading.Thread(target=lambda: __import__('time').sleep(30), daemon=True).start()
    return out == ['R']
    """
    assert pool.run([(verifier(body), "r")]) == [True]
    assert_healthy(pool)
    for w in pool._workers:  # the zygotes run no verifier code, so they never hold a verifier's thread
        with open(f"/proc/{w.proc.pid}/status") as f:
            assert "Threads:\t1" in f.read()


# ------------------------------------------------------------------ workers, modes


def test_workers_start_isolated_with_empty_environment(pool):
    pool.run([(LOWER, "warm")] * 200)
    idle = [w for w in pool._workers if w.state == "ready" and not w.inflight]
    assert idle
    for w in idle:
        with open(f"/proc/{w.proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[1] == b"-I"
        with open(f"/proc/{w.proc.pid}/environ", "rb") as f:
            assert f.read() == b""
        assert os.getpgid(w.proc.pid) == w.proc.pid != os.getpgid(0)
        with open(f"/proc/{w.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        assert status["Threads"].strip() == "1"
        if os.geteuid() == 0:  # root drops to nobody, keeping at most CAP_DAC_READ_SEARCH (see lockdown.drop_root)
            assert status["Uid"].split() == ["65534"] * 4
            assert int(status["CapEff"], 16) & ~(1 << lockdown.CAP_DAC_READ_SEARCH) == 0
    assert pool.run([(verifier("return os.getuid() != 0 and open('/etc/hostname').read() != ''"), "x")]) == [None]


def test_no_pickle_transport_in_the_sandbox_package():
    banned = {"pickle", "multiprocessing", "concurrent", "marshal", "shelve", "dill", "cloudpickle"}
    for path in Path(pool_module.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"


def test_forked_child_neither_uses_nor_stops_the_workers(pool):
    pid = os.fork()
    if pid == 0:  # child: run() refuses, close() leaves the parent's workers alone
        code = 0
        try:
            pool.run([(LOWER, "a")])
            code = 1
        except SandboxError:
            pool.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert_healthy(pool)


def test_recycling_keeps_answers_correct():
    with VerifierPool(workers=2, timeout=0.5, recycle_after=10, batch_size=5) as p:
        calls = [(LOWER, "abc" if i % 2 else "ABC") for i in range(60)]
        assert p.run(calls) == [bool(i % 2) for i in range(60)]
        assert p.stats["recycled"] >= 4 and p.stats["restarts"] >= 2


def test_unknown_isolation_and_missing_kernel_support(monkeypatch):
    with pytest.raises(ValueError, match="isolation"):
        VerifierPool(isolation="docker")
    monkeypatch.setattr(lockdown, "landlock_abi", lambda: 0)
    with pytest.raises(IsolationUnavailable, match="isolation='none'"):
        check_isolation("seccomp")
    with pytest.raises(IsolationUnavailable, match="Landlock"):
        VerifierPool(workers=1)
    check_isolation("none")


def test_isolation_none_still_protects_the_caller():
    with VerifierPool(workers=1, timeout=0.3, isolation="none") as p:
        assert p.run([(LOWER, "abc"), (verifier("while True:\n    pass"), "x"), (verifier("os._exit(1)"), "x")]) == [
            True,
            None,
            None,
        ]
        assert_healthy(p)


def test_worker_start_failures_are_reported(monkeypatch):
    monkeypatch.setattr(pool_module, "_BOOTSTRAP", 'import sys; sys.stdout.write(\'{"error": "boom"}\\n\')')
    with pytest.raises(IsolationUnavailable, match="boom"):
        VerifierPool(workers=1, start_timeout=10)
    monkeypatch.setattr(pool_module, "_BOOTSTRAP", "import no_such_module_xyz")
    with pytest.raises(IsolationUnavailable, match="No module named 'no_such_module_xyz'"):
        VerifierPool(workers=2, start_timeout=10)


@pytest.mark.skipif(lockdown.bwrap_path() is None, reason="bubblewrap (`bwrap`) is not installed")
def test_bwrap_mode(tmp_path):
    marker = tmp_path / "pwned"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        with VerifierPool(workers=1, timeout=0.5, isolation="bwrap") as p:
            assert_healthy(p)
            attack(p, f"return os.system('touch {marker}') == 0")
            attack(p, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.2)\nreturn True")
            attack(p, f"open('{marker}', 'w').write('x')\nreturn True")
            attack(p, "os.kill(os.getppid(), signal.SIGKILL)\nreturn True".replace("signal.SIGKILL", "9"))
            attack(p, "while True:\n    try:\n        pass\n    except BaseException:\n        pass")
        assert not marker.exists()
    finally:
        server.close()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_attacks_are_real_without_isolation(tmp_path):
    """Control: with isolation="none" the same attack code does reach the host, so the tests above can fail."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    bodies = [
        f"return os.system('touch {tmp_path}/by_system') == 0",
        f"open('{tmp_path}/new.txt', 'w').write('x')\nreturn True",
        f"os.rename('{keep}', '{tmp_path}/moved.txt')\nreturn True",
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()\nreturn True",
    ]
    try:
        with VerifierPool(workers=1, timeout=2.0, isolation="none") as p:
            assert p.run([(verifier(b), "r") for b in bodies]) == [True] * 4
        assert sorted(x.name for x in tmp_path.iterdir()) == ["by_system", "moved.txt", "new.txt"]
        server.settimeout(1)
        server.accept()[0].close()
    finally:
        server.close()
