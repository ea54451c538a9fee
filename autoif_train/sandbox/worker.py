"""The verifier worker: a long-lived process that locks itself down, then runs batches of verifier calls.

Started by `VerifierPool` only, as
    python -I -X utf8 -c "<bootstrap>" '<json config>'      (empty environment; optionally inside bwrap)

Protocol (one line per message):
  pool -> worker  {"codes": {sha1: source}, "sizes": [n0, n1, ...], "calls": [[sha1, text index], ...]}
                  followed by the batch's distinct responses as raw UTF-8 (n0 + n1 + ... bytes, no separator);
                  the pool is trusted
  worker -> pool  at start: "ready" (or {"error": "..."} if lock-down failed, before any verifier ran);
                  per call, in order: true | false | null | "timeout" (written together at the end of
                  the batch, or every 0.2 s in a slow one);
                  after a batch: "done", or "recycle" when the worker is about to exit to be replaced.
Nothing else travels back: the pool rejects any other line and kills the worker. Besides, an 8-byte shared
memory counter (a file the pool passes as fd argv[2]) holds the number of calls started, the running one included.

Each verifier source is compiled and its module body executed once per worker (cached by sha1, each with its own
copy of the builtins); that time counts towards the timeout of the verifier's first call in the worker. Timeouts: during a batch a
SIGALRM ticks every 50 ms and raises inside the verifier once its call's deadline has passed (and at every tick
after); a verifier that swallows it (or ignores SIGALRM) is killed by the pool's watchdog. A worker replaces itself ("recycle") after
`recycle_after` calls, after half its CPU budget, or when a verifier left a thread running.
"""

from __future__ import annotations

import builtins
import importlib
import json
import mmap
import os
import signal
import sys
import time

from autoif_train.sandbox.lockdown import lock_down
from autoif_train.sandbox.scoring import coerce_result

# Imported before lock-down so verifiers find them loaded (later imports of the Python installation still work).
PREIMPORTED = (
    "collections", "datetime", "difflib", "functools", "itertools", "math", "random", "re", "statistics", "string",
    "textwrap", "typing", "unicodedata", "collections.abc", "json",
)  # fmt: skip

TOKENS = {True: b"true\n", False: b"false\n", None: b"null\n"}
TIMEOUT, DONE, RECYCLE, READY = b'"timeout"\n', b'"done"\n', b'"recycle"\n', b'"ready"\n'
_BROKEN = object()  # cache marker: the verifier's module body failed or defines no callable `evaluate`


class _Timeout(BaseException):
    """Raised inside a verifier by the call timer."""


_INF = float("inf")
_deadline = _INF  # monotonic time at which the running verifier code times out; _INF while none runs


def _on_alarm(signum, frame):
    if time.monotonic() >= _deadline:
        raise _Timeout()


def _ticking(timeout: float) -> None:
    """Start the SIGALRM tick that enforces `_deadline` (every 50 ms, or timeout/4 if shorter)."""
    tick = min(0.05, timeout / 4)
    signal.setitimer(signal.ITIMER_REAL, tick, tick)


def _load(source: str, timeout: float):
    """Compile and execute a verifier module before `timeout`; returns (`evaluate` or _BROKEN, timed out)."""
    global _deadline
    _deadline = time.monotonic() + timeout
    try:
        # a private copy of the builtins: a verifier that replaces len() does not change it for the others
        namespace = {"__name__": "__verifier__", "__builtins__": dict(vars(builtins))}
        exec(compile(source, "<verifier>", "exec"), namespace)
        fn = namespace.get("evaluate")
        _deadline = _INF
        return (fn if callable(fn) else _BROKEN), False
    except _Timeout:
        _deadline = _INF
        return _BROKEN, True
    except BaseException:  # noqa: BLE001 - anything a verifier raises is its failure
        _deadline = _INF
        return _BROKEN, False


def _threads() -> int:
    try:
        return len(os.listdir(_task_fd))
    except OSError:
        return 1


def _run_batch(msg: dict, texts: list[str], cache: dict, strikes: dict, cfg: dict, chan_out: int) -> None:
    """Run the calls of one batch; the result tokens go out in one write at its end (or every 0.2 s).

    Before each call, the number of calls this worker has started (this one included) is stored in the progress
    counter shared with the pool: that is how the pool's watchdog sees progress, and knows which call to blame
    when it kills a stuck worker.

    A call's deadline is one float store (no syscall per call); a 50 ms SIGALRM tick, running only during the
    batch, raises _Timeout inside the verifier once its deadline has passed, and again at every tick after.
    """
    global _deadline
    timeout, max_strikes, codes = cfg["timeout"], cfg["max_strikes"], msg["codes"]
    monotonic, null, counter, outs = time.monotonic, TOKENS[None], _progress, []
    started = counter[0]
    last_flush = monotonic()
    _ticking(timeout)
    try:
        for key, text_index in msg["calls"]:
            started += 1
            counter[0] = started
            try:
                out = null
                fn = cache.get(key)
                start = monotonic()
                if start - last_flush > 0.2:  # slow batch: let the pool see the results so far
                    os.write(chan_out, b"".join(outs))
                    outs.clear()
                    last_flush = start
                if fn is None:  # first call of this verifier here: loading counts towards the call's timeout
                    if len(cache) >= 4096:
                        cache.clear()
                    fn, timed_out = _load(codes[key], timeout)
                    cache[key] = fn
                    out = TIMEOUT if timed_out else null
                if fn is not _BROKEN and strikes.get(key, 0) < max_strikes:
                    _deadline = start + timeout
                    try:
                        value = fn(texts[text_index])
                        if value is True or value is False:
                            out = TOKENS[value]
                        else:
                            out = TOKENS[coerce_result(value)]
                        del value
                        _deadline = _INF
                    except _Timeout:
                        _deadline = _INF
                        out = TIMEOUT
                    except BaseException:  # noqa: BLE001
                        _deadline = _INF
                if out is TIMEOUT:
                    strikes[key] = strikes.get(key, 0) + 1
            except _Timeout:  # the tick landed between the verifier's return and the reset of the deadline
                _deadline = _INF
                out = TIMEOUT
            except BaseException:  # noqa: BLE001
                _deadline = _INF
                out = null
            outs.append(out)
    finally:
        _deadline = _INF
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    os.write(chan_out, b"".join(outs))


def serve(cfg: dict, chan_in, chan_out: int) -> None:
    """Answer batches until the pool closes the channel or this worker decides to be recycled."""
    cfg = dict(cfg, timeout=float(cfg["timeout"]), max_strikes=int(cfg["max_strikes"]))
    recycle_calls, cpu_budget = int(cfg["recycle_after"]), float(cfg["cpu_seconds"]) / 2
    cache: dict[str, object] = {}
    strikes: dict[str, int] = {}
    done = 0
    while True:
        line = chan_in.readline()
        if not line:
            return
        msg = json.loads(line)
        payload = chan_in.read(sum(msg["sizes"]))
        texts, offset = [], 0
        for size in msg["sizes"]:
            texts.append(payload[offset : offset + size].decode("utf-8", "surrogatepass"))
            offset += size
        _run_batch(msg, texts, cache, strikes, cfg, chan_out)
        done += len(msg["calls"])
        if done >= recycle_calls or time.process_time() > cpu_budget or _threads() > 1:
            os.write(chan_out, RECYCLE)
            return
        os.write(chan_out, DONE)


def main(argv: list[str] | None = None) -> None:
    """Map the progress counter, move the channel off fds 0/1, lock down, say "ready", serve."""
    global _task_fd, _progress
    argv = argv if argv is not None else sys.argv[1:]
    cfg = json.loads(argv[0])
    progress_fd = int(argv[1])
    _progress = memoryview(mmap.mmap(progress_fd, 8)).cast("q")
    os.close(progress_fd)
    chan_in_fd, chan_out = os.dup(0), os.dup(1)
    devnull_r, devnull_w = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull_r, 0)
    os.dup2(devnull_w, 1)
    os.dup2(devnull_w, 2)
    sys.dont_write_bytecode = True
    for name in PREIMPORTED:
        importlib.import_module(name)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        _task_fd = os.open("/proc/self/task", os.O_RDONLY | os.O_DIRECTORY)
        lock_down(cfg["isolation"], int(cfg["memory_mb"]), int(cfg["cpu_seconds"]), cfg.get("read_paths"))
    except BaseException as e:  # noqa: BLE001 - reported to the pool, which refuses to run
        os.write(chan_out, (json.dumps({"error": f"{type(e).__name__}: {e}"[:2000]}) + "\n").encode())
        os._exit(3)
    os.write(chan_out, READY)
    with os.fdopen(chan_in_fd, "rb", buffering=1 << 16) as chan_in:
        serve(cfg, chan_in, chan_out)
    os._exit(0)


_task_fd = -1
_progress: memoryview | list = [0]  # calls started so far (the running one included), shared with the pool

if __name__ == "__main__":
    main()
