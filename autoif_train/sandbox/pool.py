"""`VerifierPool`: long-lived locked-down worker processes that run verifier calls in batches, with a watchdog.

The pool starts `workers` processes with `subprocess` (never forking the caller), each in its own session and with
an empty environment. `run(calls)` splits the calls into batches (default 64) and keeps up to two batches in
flight per worker (the next one waits in the pipe, so a worker never idles waiting for this process). Results come
back as lines of true / false / null through a non-blocking event loop in the calling thread: no extra threads,
no pickle, no multiprocessing.

Watchdog: a worker whose shared progress counter (the number of calls it has started) stays the same for
`timeout + grace` seconds, whose batch overruns `len(batch) * (timeout + 0.1) + grace + 1` seconds, that dies, or
that sends anything but the expected tokens, is SIGKILLed with its process group. The call it was on becomes None
(a "strike" against that verifier), its other unanswered calls are requeued, and a fresh worker is started. If
the counter does not name a call of the batch, the unanswered calls are rerun one per batch, which tells. A
verifier with `max_strikes` timeouts or crashes is disabled: its later calls are None without running, and it is
listed in `pool.disabled` (code hash -> reason) and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from autoif_train.sandbox.lockdown import ISOLATION_MODES, IsolationUnavailable, bwrap_prefix, check_isolation
from autoif_train.sandbox.scoring import Result

logger = logging.getLogger(__name__)

_TOKENS: dict[bytes, object] = {b"true": True, b"false": False, b"null": None, b'"timeout"': "timeout"}
_BAD = object()
_IN_FLIGHT = 2  # batches per worker
_PKG_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = f"import sys; sys.path.append({_PKG_ROOT!r}); from autoif_train.sandbox.worker import main; main()"


class SandboxError(RuntimeError):
    """The pool cannot be used (after close(), or in a process forked from its owner)."""


def code_hash(code: str) -> str:
    """The key a verifier is cached and reported under (sha1 of its source)."""
    return hashlib.sha1(code.encode("utf-8", "surrogatepass")).hexdigest()


class _Worker:
    """One worker process and this process's view of it."""

    def __init__(self, cmd: list[str]):
        # stderr: only what is printed before the worker points fd 2 at /dev/null (bwrap or start-up errors)
        self.stderr = tempfile.TemporaryFile()
        # progress counter shared with the worker: calls it has started, the running one included
        progress_file = tempfile.TemporaryFile()
        fd = progress_file.fileno()
        os.ftruncate(fd, 8)
        self.progress = mmap.mmap(fd, 8)
        self.proc = subprocess.Popen(
            cmd + [str(fd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={}, cwd="/", start_new_session=True, close_fds=True, pass_fds=(fd,),
        )  # fmt: skip
        progress_file.close()
        self.out_fd, self.in_fd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.in_fd, False)
        self.state = "starting"  # starting | ready | retiring | dead
        self.buf = b""  # received bytes of an incomplete line
        self.pending = b""  # bytes still to write
        self.written = 0  # bytes written so far
        # batches sent and not finished: (calls [(call index, code hash, response)], end offset in bytes written)
        self.inflight: deque[tuple[list[tuple[int, str, str]], int]] = deque()
        self.pos = 0  # position in the first in-flight batch of the next expected result
        self.base = 0  # calls in the batches this worker finished (counter - base - 1 = position of the running call)
        self.deadline = 0.0  # no progress by then -> watchdog
        self.hard_deadline = 0.0  # the first in-flight batch must be done by then, whatever the counter says
        self.started_at = 0.0
        self.last_counter = -1
        self.error = ""

    def counter(self) -> int:
        """The worker's progress counter (untrusted: a verifier can write it; callers range-check it)."""
        try:
            return int.from_bytes(self.progress[:8], "little", signed=True)
        except ValueError:  # already closed
            return -1

    def startup_stderr(self) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read(4000).decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                kill()
            except OSError:
                pass
        self.reap()

    def reap(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.stderr, self.progress):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.state = "dead"


class VerifierPool:
    """Run `(verifier code, response)` calls in locked-down worker processes; results are True / False / None.

    Args:
        workers: number of worker processes.
        timeout: seconds per call, including the first execution of the verifier's module body in a worker;
            a timed-out call is None.
        isolation: "seccomp" (default), "bwrap" (the same inside bubblewrap) or "none" (rlimits only; explicit
            opt-out). Raises IsolationUnavailable when the kernel or machine cannot provide the chosen mode.
        batch_size: calls sent to a worker at once.
        memory_mb: address-space limit of each worker.
        cpu_seconds: lifetime CPU limit of a worker (it asks to be replaced after half of it).
        grace: extra seconds the watchdog waits beyond `timeout` before it kills a worker stuck on one call.
        max_strikes: timeouts / worker crashes after which a verifier is disabled.
        recycle_after: calls after which a worker is replaced by a fresh one.
        start_timeout: seconds a worker may take to start and lock down.
        extra_read_paths: more files/directories verifiers may read (e.g. an nltk_data folder); by default only
            system libraries, the Python installation and this package are readable.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 1.0,
        isolation: str = "seccomp",
        *,
        batch_size: int = 64,
        memory_mb: int = 1024,
        cpu_seconds: int = 120,
        grace: float = 0.5,
        max_strikes: int = 3,
        recycle_after: int = 20000,
        start_timeout: float = 30.0,
        extra_read_paths: Sequence[str] = (),
    ):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
        if workers < 1 or timeout <= 0 or batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1 and timeout > 0")
        check_isolation(isolation)
        self.timeout, self.isolation, self.batch_size = float(timeout), isolation, int(batch_size)
        self.grace, self.max_strikes, self.start_timeout = float(grace), int(max_strikes), float(start_timeout)
        config = {
            "isolation": isolation, "timeout": self.timeout, "memory_mb": int(memory_mb),
            "cpu_seconds": int(cpu_seconds), "max_strikes": self.max_strikes, "recycle_after": int(recycle_after),
            "read_paths": [os.path.abspath(p) for p in extra_read_paths],
        }  # fmt: skip
        cmd = [sys.executable, "-I", "-X", "utf8", "-c", _BOOTSTRAP, json.dumps(config)]
        self._cmd = (bwrap_prefix(os.geteuid()) + cmd) if isolation == "bwrap" else cmd
        self.strikes: dict[str, int] = {}
        self.disabled: dict[str, str] = {}  # code hash -> reason
        self.stats = {"calls": 0, "timeouts": 0, "crashes": 0, "restarts": 0, "recycled": 0}
        self.batch_latencies: deque[float] = deque(maxlen=100_000)  # seconds from a batch's start to its end
        self._lock = threading.Lock()  # one run at a time; concurrent callers wait
        self._hashes: dict[str, str] = {}  # verifier source -> code_hash
        self._sel = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        self._closed = False
        self._failed_starts = 0
        self._owner = os.getpid()  # a forked child (e.g. a DataLoader worker) must not use or stop these workers
        try:
            for _ in range(workers):
                self._workers.append(self._spawn())
            self._loop(deque(), {}, [], None)  # wait until every worker said "ready"
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public

    def run(self, calls: Sequence[tuple[str, str]], progress: bool = False) -> list[Result]:
        """Results of `evaluate(response)` for each (code, response), in input order; never raises for a verifier."""
        with self._lock:
            if self._closed:
                raise SandboxError("VerifierPool.run() called after close()")
            if os.getpid() != self._owner:
                raise SandboxError("VerifierPool.run() called in a forked child; create a pool in this process")
            results: list[Result] = [None] * len(calls)
            codes: dict[str, str] = {}
            keyed = []
            hashes = self._hashes
            if len(hashes) > 100_000:
                hashes.clear()
            for i, call in enumerate(calls):
                try:
                    code, response = call
                except (TypeError, ValueError):
                    code = response = None
                if type(code) is not str or type(response) is not str:
                    raise TypeError(f"call {i}: expected (code: str, response: str), got {call!r:.80}")
                key = hashes.get(code)
                if key is None:
                    key = hashes[code] = code_hash(code)
                if key not in codes:
                    codes[key] = code
                keyed.append((i, key, response))
            queue = deque(keyed[s : s + self.batch_size] for s in range(0, len(keyed), self.batch_size))
            bar = tqdm(total=len(calls), desc="verifiers", unit="call", disable=not progress, leave=False)
            try:
                self._loop(queue, codes, results, bar)
            finally:
                bar.close()
            self.stats["calls"] += len(calls)
            return results

    def close(self) -> None:
        """Stop all workers (closing their input; SIGKILL if they do not exit within a second)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner:
            return
        for w in self._workers:
            if w.state != "dead":
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
        end = time.monotonic() + 1.0
        for w in self._workers:
            if w.state != "dead":
                try:
                    w.proc.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                w.kill()
        self._sel.close()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> _Worker:
        w = _Worker(self._cmd)
        w.deadline = time.monotonic() + self.start_timeout
        self._sel.register(w.out_fd, selectors.EVENT_READ, w)
        return w

    def _forget(self, w: _Worker) -> None:
        for fd in (w.out_fd, w.in_fd):
            if fd in self._sel.get_map():
                self._sel.unregister(fd)

    def _strike(self, key: str, reason: str) -> None:
        self.strikes[key] = self.strikes.get(key, 0) + 1
        if self.strikes[key] >= self.max_strikes and key not in self.disabled:
            self.disabled[key] = f"{reason} x{self.strikes[key]}"
            logger.warning("verifier %s disabled after %d timeouts/crashes (%s)", key[:12], self.strikes[key], reason)

    def _retire(self, w: _Worker, queue: deque, reason: str, blame: bool) -> None:
        """Kill a worker; blame the call it was running (None + strike) and requeue its other unanswered calls."""
        self._forget(w)
        if w.state == "starting":
            stderr = w.startup_stderr()
            w.kill()
            self._failed_starts += 1
            msg = w.error or f"worker did not start ({reason}; exit code {w.proc.returncode}): {stderr[-2000:]}"
            if self._failed_starts >= 3 or not any(x.state == "ready" for x in self._workers if x is not w):
                raise IsolationUnavailable(f"sandbox worker (isolation={self.isolation!r}) failed to start: {msg}")
            return
        at = w.counter() - w.base - 1
        w.kill()
        requeue = []
        if w.inflight:
            batch, end = w.inflight.popleft()
            if len(batch) - w.pos == 1:
                at = w.pos  # one call left: it is the one
            if not blame or w.written < end:  # it died before it had its whole batch: no call is to blame
                requeue.append(batch[w.pos :])
            elif w.pos <= at < len(batch):  # the counter says which call was running
                self.stats["timeouts" if reason == "watchdog" else "crashes"] += 1
                self._strike(batch[at][1], reason)
                requeue.append(batch[w.pos : at] + batch[at + 1 :])
            else:  # counter out of range (a verifier wrote it?): rerun the calls one per batch to find the culprit
                requeue += [[call] for call in batch[w.pos :]]
            requeue += [b for b, _ in w.inflight]
            w.inflight.clear()
        for batch in reversed(requeue):
            if batch:
                queue.appendleft(batch)

    # ------------------------------------------------------------------ sending

    def _send(self, w: _Worker, batch: list, codes: dict, results: list, bar) -> None:
        live = []
        for item in batch:
            if item[1] in self.disabled:
                results[item[0]] = None
                if bar is not None:
                    bar.update(1)
            else:
                live.append(item)
        if not live:
            return
        used = {key: codes[key] for _, key, _ in live}
        index: dict[str, int] = {}
        refs = [[key, index.setdefault(resp, len(index))] for _, key, resp in live]
        blobs = [t.encode("utf-8", "surrogatepass") for t in index]
        header = json.dumps({"codes": used, "sizes": [len(b) for b in blobs], "calls": refs}) + "\n"
        data = header.encode() + b"".join(blobs)
        w.inflight.append((live, w.written + len(w.pending) + len(data)))
        w.pending += data
        if len(w.inflight) == 1:
            self._start_batch(w, time.monotonic())
        self._flush(w)

    def _start_batch(self, w: _Worker, now: float) -> None:
        """Deadlines for the first in-flight batch, which the worker starts now."""
        w.pos, w.last_counter, w.started_at = 0, w.counter(), now
        w.deadline = now + self.timeout + self.grace
        w.hard_deadline = now + len(w.inflight[0][0]) * (self.timeout + 0.1) + self.grace + 1.0

    def _flush(self, w: _Worker) -> None:
        """Write as much pending data as the pipe takes; watch the pipe for writability while some is left."""
        try:
            n = os.write(w.in_fd, w.pending)
            w.pending, w.written = w.pending[n:], w.written + n
        except BlockingIOError:
            pass
        except OSError:
            w.pending = b""  # the worker died; its EOF is handled by the reader
        watched = w.in_fd in self._sel.get_map()
        if w.pending and not watched:
            self._sel.register(w.in_fd, selectors.EVENT_WRITE, w)
        elif not w.pending and watched:
            self._sel.unregister(w.in_fd)

    # ------------------------------------------------------------------ receiving

    def _read(self, w: _Worker, queue: deque, results: list, bar) -> None:
        """Read what the worker wrote (non-blocking) and handle complete lines; EOF retires the worker."""
        try:
            chunk = os.read(w.out_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # EOF: the worker exited
            if w.state == "retiring":
                self._forget(w)
                w.reap()
            else:
                self._retire(w, queue, "crash", blame=True)
            return
        *lines, w.buf = (w.buf + chunk).split(b"\n")
        if lines:
            self._on_lines(w, lines, queue, results, bar)
        if w.state != "dead" and len(w.buf) > 4096:
            self._retire(w, queue, "protocol: oversized line", blame=True)

    def _on_lines(self, w: _Worker, lines: list[bytes], queue: deque, results: list, bar) -> None:
        """Result tokens for the first in-flight batch (fast path), then batch ends and start-up messages."""
        got = 0
        for line in lines:
            batch = w.inflight[0][0] if w.inflight else ()
            if w.pos < len(batch):
                token = _TOKENS.get(line, _BAD)
                if token is _BAD:
                    self._retire(w, queue, "protocol", blame=True)
                    break
                idx, key, _ = batch[w.pos]
                if token == "timeout":
                    self.stats["timeouts"] += 1
                    self._strike(key, "timeout")
                    token = None
                results[idx] = token
                w.pos += 1
                got += 1
            elif batch and line in (b'"done"', b'"recycle"'):
                now = time.monotonic()
                self.batch_latencies.append(now - w.started_at)
                w.base += len(w.inflight.popleft()[0])
                if line == b'"recycle"':  # the worker exits; batches it has not read go to another worker
                    self.stats["recycled"] += 1
                    w.state, w.deadline = "retiring", now + self.start_timeout
                    for b, _ in reversed(w.inflight):
                        queue.appendleft(b)
                    w.inflight.clear()
                    self._forget_input(w)
                elif w.inflight:
                    self._start_batch(w, now)
            elif w.state == "starting" and line == b'"ready"':
                w.state, self._failed_starts = "ready", 0
                w.stderr.close()
            elif w.state == "starting" and len(line) <= 4096:
                try:
                    w.error = str(json.loads(line).get("error", ""))[:2000]
                except Exception:
                    w.error = "unexpected start-up message"
                # the worker exits next; its EOF reports the failure
            else:
                self._retire(w, queue, "protocol", blame=bool(batch))
                break
        if got:
            if w.inflight:
                w.deadline = time.monotonic() + self.timeout + self.grace
            if bar is not None:
                bar.update(got)

    def _forget_input(self, w: _Worker) -> None:
        w.pending = b""
        if w.in_fd in self._sel.get_map():
            self._sel.unregister(w.in_fd)

    # ------------------------------------------------------------------ event loop

    def _loop(self, queue: deque, codes: dict, results: list, bar) -> None:
        """Drive the workers until the queue is empty and no batch is in flight (and none is starting)."""
        while True:
            for i, w in enumerate(self._workers):
                if w.state == "dead" and queue:
                    self._workers[i] = w = self._spawn()
                    self.stats["restarts"] += 1
                while w.state == "ready" and queue and len(w.inflight) < _IN_FLIGHT:
                    self._send(w, queue.popleft(), codes, results, bar)
            waiting = [w for w in self._workers if w.state == "starting" or w.inflight]
            if not queue and not waiting:
                return
            timed = waiting + [w for w in self._workers if w.state == "retiring"]
            wait = max(0.0, min(w.deadline for w in timed) - time.monotonic()) if timed else 0.05
            for key, _ in self._sel.select(timeout=min(wait, 1.0)):
                w = key.data
                if w.state == "dead":
                    continue
                if key.fd == w.in_fd:
                    self._flush(w)
                else:
                    self._read(w, queue, results, bar)
            now = time.monotonic()
            for w in self._workers:
                if w.state == "dead" or now <= w.deadline or (w.state == "ready" and not w.inflight):
                    continue
                self._read(w, queue, results, bar)  # take in whatever arrived before judging
                if w.state == "dead" or now <= w.deadline or (w.state == "ready" and not w.inflight):
                    continue
                if w.inflight and now < w.hard_deadline and w.counter() != w.last_counter:
                    w.last_counter = w.counter()  # still moving from call to call
                    w.deadline = now + self.timeout + self.grace
                    continue
                self._retire(w, queue, "watchdog", blame=bool(w.inflight))
