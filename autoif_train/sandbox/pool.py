"""`VerifierPool`: locked-down zygote workers that run each verifier's calls in a process holding only it.

The pool starts `workers` zygotes with `subprocess` (never forking the caller; empty environment, own session, own
pids cgroup where one can be made). `run(calls)` groups the calls by verifier into batches (default 64); a zygote
runs each batch in that verifier's own process (see `worker.py`), preferring the zygote that already holds it.
Results come back as lines of true / false / null (or the harness's "timeout" / "crash" / "unavailable") through
a non-blocking event loop in the calling thread: no threads, no pickle, no multiprocessing.

Strikes are what a zygote saw on its own clock: a call over `timeout`, or a verifier process that died or broke
protocol. `max_strikes` strikes, or a mean call time over `time_budget` x `timeout` (judged from a verifier's first
batch, which runs alone), disable a verifier: its later calls are None and it is listed in `pool.disabled` (code
hash -> reason). A zygote that is silent too long, dies or breaks protocol is SIGKILLed and replaced; its
unanswered calls are requeued once, then None + a strike. Calls that cannot run because no process can be started
are None and their verifiers are listed in `pool.unavailable`: `run` never raises for that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import selectors
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from autoif_train.core.errors import AutoIFError
from autoif_train.sandbox import lockdown
from autoif_train.sandbox.lockdown import ISOLATION_MODES, IsolationUnavailable
from autoif_train.sandbox.process import Batch as _Batch
from autoif_train.sandbox.process import ZygoteProcess as _Worker
from autoif_train.sandbox.scoring import Result

logger = logging.getLogger(__name__)

_TOKENS: dict[bytes, object] = {
    b"true": True, b"false": False, b"null": None, b'"timeout"': "timeout", b'"crash"': "crash",
    b'"unavailable"': "unavailable",
}  # fmt: skip
_BAD = object()
_IN_FLIGHT = 2  # batches per worker
_SANDBOX_DIR = str(Path(__file__).resolve().parent)
# import the worker without running autoif_train/__init__.py or putting the checkout on sys.path
_BOOTSTRAP = (
    "import sys, types\n"
    f"for name, path in (('autoif_train', {str(Path(_SANDBOX_DIR).parent)!r}), ('autoif_train.sandbox', {_SANDBOX_DIR!r})):\n"
    "    m = sys.modules[name] = types.ModuleType(name); m.__path__ = [path]\n"
    "from autoif_train.sandbox.worker import main; main()"
)


class SandboxError(AutoIFError, RuntimeError):
    """The pool cannot be used (after close(), or in a process forked from its owner)."""


def code_hash(code: str) -> str:
    """The key a verifier is reported under (sha1 of its source)."""
    return hashlib.sha1(code.encode("utf-8", "surrogatepass")).hexdigest()


class VerifierPool:
    """Run `(verifier code, response)` calls in locked-down processes, one verifier per process; results are
    True / False / None.

    Args:
        workers: number of zygote processes (each runs one verifier process at a time).
        timeout: seconds per call, and for a verifier's module body in each of its processes; a timed-out call
            is None and a strike.
        isolation: "seccomp" (default), "bwrap" (the same inside bubblewrap) or "none" (rlimits only; explicit
            opt-out). Raises IsolationUnavailable when the kernel or machine cannot provide the chosen mode.
        batch_size: calls of one verifier sent to a worker at once (run in one verifier process).
        memory_mb: address-space limit of each zygote and verifier process.
        cpu_seconds: CPU limit of each process (a zygote asks to be replaced after half of it).
        grace: extra seconds beyond `timeout` after which a silent verifier process is killed.
        max_strikes: timeouts / crashes after which a verifier is disabled.
        time_budget: a verifier whose mean call time exceeds this share of `timeout` is disabled (0: never).
        max_tasks: pids cgroup limit per worker (zygote, its verifier processes and their threads), if made.
        keep_processes: idle verifier processes a zygote keeps for later batches of the same verifier (LRU).
        recycle_after: calls after which a zygote is replaced by a fresh one.
        start_timeout: seconds a zygote may take to start and lock down.
        extra_read_paths: more files/directories verifiers may read (e.g. an nltk_data folder); by default only
            system libraries, the interpreter's stdlib and the sandbox package are readable.
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
        time_budget: float = 0.5,
        max_tasks: int = 32,
        keep_processes: int = 8,
        recycle_after: int = 20000,
        start_timeout: float = 30.0,
        extra_read_paths: Sequence[str] = (),
    ):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
        if workers < 1 or timeout <= 0 or batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1 and timeout > 0")
        lockdown.check_isolation(isolation)
        self.timeout, self.isolation, self.batch_size = float(timeout), isolation, int(batch_size)
        self.grace, self.max_strikes, self.start_timeout = float(grace), int(max_strikes), float(start_timeout)
        self.time_budget, self.max_tasks = float(time_budget), int(max_tasks)
        self._silence = 3.0 + 2 * (self.timeout + self.grace)  # longest a healthy zygote is quiet (new process)
        config = {
            "isolation": isolation, "timeout": self.timeout, "grace": self.grace, "budget": self.time_budget,
            "keep": int(keep_processes), "memory_mb": int(memory_mb), "cpu_seconds": int(cpu_seconds), "recycle_after": int(recycle_after),
            "read_paths": [os.path.abspath(p) for p in extra_read_paths],
        }  # fmt: skip
        cmd = [sys.executable, "-I", "-X", "utf8", "-c", _BOOTSTRAP, json.dumps(config)]
        self._cmd = (lockdown.bwrap_prefix(os.geteuid()) + cmd) if isolation == "bwrap" else cmd
        self.strikes: dict[str, int] = {}
        self.disabled: dict[str, str] = {}  # code hash -> reason
        self.unavailable: dict[str, str] = {}  # code hash -> why some of its calls could not run
        self.timing: dict[str, list] = {}  # code hash -> [calls timed, seconds] on the zygotes' clock
        self.stats = {"calls": 0, "timeouts": 0, "crashes": 0, "restarts": 0, "recycled": 0, "groups": 0,
                      "processes": 0, "isolation_s": 0.0, "unavailable": 0}  # fmt: skip
        self.batch_latencies: deque[float] = deque(maxlen=100_000)  # seconds from a batch's start to its end
        self.cgroups = 0  # workers started in a pids cgroup of their own
        self._lock = threading.Lock()  # one run at a time; concurrent callers wait
        self._hashes: dict[str, str] = {}  # verifier source -> code_hash
        self._sel = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        self._inflight_keys: Counter = Counter()
        self._homes: dict[str, set[int]] = {}  # code hash -> serials of the workers that hold its process
        self._closed = False
        self._starting = True  # in __init__, a worker that fails to start is an error
        self._failed_starts, self._start_error = 0, ""
        self._spawned = 0
        self._owner = os.getpid()  # a forked child (e.g. a DataLoader worker) must not use or stop these workers
        try:
            for _ in range(workers):
                self._workers.append(self._spawn())
            self._loop(deque(), {}, [], None)  # wait until every worker said "ready"
        except BaseException:
            self.close()
            raise
        self._starting = False

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
            groups: dict[str, list[tuple[int, str]]] = {}
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
                if key not in groups:
                    codes[key], groups[key] = code, []
                groups[key].append((i, response))
            bs = self.batch_size
            queue = deque(_Batch(k, v[s : s + bs]) for k, v in groups.items() for s in range(0, len(v), bs))
            bar = tqdm(total=len(calls), desc="verifiers", unit="call", disable=not progress, leave=False)
            self._failed_starts = 0
            try:
                self._loop(queue, codes, results, bar)
            finally:
                bar.close()
            self.stats["calls"] += len(calls)
            if len(self.timing) > 100_000:
                self.timing.clear()
                self._homes.clear()
            return results

    def close(self) -> None:
        """Stop all workers (closing their input; SIGKILL if they do not exit within a second)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner:
            return
        live = [w for w in self._workers if w.state != "dead"]
        for w in live:
            w.close_input()
        end = time.monotonic() + 1.0
        for w in live:
            w.stop(end)
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
        self._spawned += 1
        # room for start-up (ctypes.util runs ldconfig); the limit drops to max_tasks once the worker is ready
        cgroup = lockdown.pids_cgroup(
            f"autoif-sandbox-{os.getpid()}-{id(self):x}-{self._spawned}", self.max_tasks + 16
        )
        try:
            w = _Worker(self._cmd, cgroup)
            w.serial = self._spawned
        except BaseException:
            lockdown.remove_cgroup(cgroup)
            raise
        self.cgroups += cgroup is not None
        w.deadline = time.monotonic() + self.start_timeout
        self._sel.register(w.out_fd, selectors.EVENT_READ, w)
        return w

    def _strike(self, key: str, reason: str) -> None:
        self.strikes[key] = self.strikes.get(key, 0) + 1
        if self.strikes[key] >= self.max_strikes:
            self._disable(key, f"{reason} x{self.strikes[key]}")

    def _disable(self, key: str, reason: str) -> None:
        if key not in self.disabled:
            self.disabled[key] = reason
            logger.warning("verifier %s disabled (%s)", key[:12], reason)

    def _done_with(self, batch: _Batch) -> None:
        self._inflight_keys[batch.key] -= 1
        if self._inflight_keys[batch.key] <= 0:
            del self._inflight_keys[batch.key]

    def _retire(self, w: _Worker, queue: deque, results: list, reason: str) -> None:
        """Kill a worker; requeue its unanswered calls (a second time: None and a strike for that verifier)."""
        w.forget(self._sel)
        if w.state == "starting":
            stderr = w.startup_stderr()
            w.kill()
            self._failed_starts += 1
            msg = w.error or f"worker did not start ({reason}; exit code {w.proc.returncode}): {stderr[-2000:]}"
            self._start_error = f"sandbox worker (isolation={self.isolation!r}) failed to start: {msg}"
            if self._starting:
                raise IsolationUnavailable(self._start_error)
            logger.warning("%s", self._start_error)
            return
        w.kill()
        requeue = []
        for n, batch in enumerate(w.inflight):
            self._done_with(batch)
            rest = batch.items[w.pos :] if n == 0 else batch.items
            if n == 0 and batch.tries >= 1:  # the worker died twice on this verifier's batch
                self.stats["crashes"] += 1
                self._strike(batch.key, f"worker {reason}")
                for idx, _ in rest:
                    results[idx] = None
            elif rest:
                requeue.append(_Batch(batch.key, rest, batch.tries + (n == 0)))
        w.inflight.clear()
        queue.extendleft(reversed(requeue))

    # ------------------------------------------------------------------ sending

    def _pick(self, w: _Worker, queue: deque, results: list, bar) -> _Batch | None:
        """The next batch for `w`: one of a verifier whose process `w` already holds, else of a new verifier, else
        of one whose workers are all busy. Disabled verifiers' batches become None; unmeasured ones wait."""
        best, best_rank, i = -1, 3, 0
        while i < len(queue):
            batch = queue[i]
            if batch.key in self.disabled:
                del queue[i]
                for idx, _ in batch.items:
                    results[idx] = None
                if bar is not None:
                    bar.update(len(batch.items))
                continue
            if not (batch.key in self._inflight_keys and self.timing.get(batch.key, (0,))[0] < 2):
                homes = self._homes.get(batch.key, ())
                if w.serial in homes:
                    best, best_rank = i, 0
                    break
                if not homes and best_rank > 1:
                    best, best_rank = i, 1
                elif best_rank > 2 and all(len(x.inflight) >= _IN_FLIGHT for x in self._workers if x.serial in homes):
                    best, best_rank = i, 2
            i += 1
        if best < 0:
            return None
        batch = queue[best]
        del queue[best]
        self._homes.setdefault(batch.key, set()).add(w.serial)
        return batch

    def _send(self, w: _Worker, batch: _Batch, codes: dict) -> None:
        index: dict[str, int] = {}
        refs = [index.setdefault(resp, len(index)) for _, resp in batch.items]
        blobs = [t.encode("utf-8", "surrogatepass") for t in index]
        header = {
            "key": batch.key, "code": codes[batch.key], "sizes": [len(b) for b in blobs], "calls": refs,
            "strikes_left": self.max_strikes - self.strikes.get(batch.key, 0),
            "prior": self.timing.get(batch.key, [0, 0.0]),
        }  # fmt: skip
        w.inflight.append(batch)
        self._inflight_keys[batch.key] += 1
        w.pending += (json.dumps(header) + "\n").encode() + b"".join(blobs)
        if len(w.inflight) == 1:
            self._start_batch(w, time.monotonic())
        w.flush(self._sel)

    def _start_batch(self, w: _Worker, now: float) -> None:
        w.pos, w.started_at, w.deadline = 0, now, now + self._silence

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
                w.forget(self._sel)
                w.reap()
            else:
                self._retire(w, queue, results, "crash")
            return
        *lines, w.buf = (w.buf + chunk).split(b"\n")
        if lines:
            self._on_lines(w, lines, queue, results, bar)
        if w.state != "dead" and len(w.buf) > 4096:
            self._retire(w, queue, results, "protocol: oversized line")

    def _on_lines(self, w: _Worker, lines: list[bytes], queue: deque, results: list, bar) -> None:
        """Result tokens for the first in-flight batch (fast path), then batch ends and start-up messages."""
        got = 0
        for line in lines:
            batch = w.inflight[0] if w.inflight else None
            if batch is not None and w.pos < len(batch.items):
                token = _TOKENS.get(line, _BAD)
                if token is _BAD:
                    self._retire(w, queue, results, "protocol")
                    break
                if token == "timeout" or token == "crash":
                    self.stats["timeouts" if token == "timeout" else "crashes"] += 1
                    self._strike(batch.key, token)
                    token = None
                elif token == "unavailable":
                    self.stats["unavailable"] += 1
                    self.unavailable.setdefault(batch.key, "a verifier process could not start")
                    token = None
                results[batch.items[w.pos][0]] = token
                w.pos += 1
                got += 1
            elif batch is not None and line.startswith(b'{"'):
                if not self._end_batch(w, batch, line, queue):
                    self._retire(w, queue, results, "protocol")
                    break
            elif w.state == "starting" and line == b'"ready"':
                w.state, self._failed_starts = "ready", 0
                w.stderr.close()
                if w.cgroup and not lockdown.set_pids_max(w.cgroup, self.max_tasks):
                    self._retire(w, queue, results, "cannot set pids.max")
                    break
            elif w.state == "starting" and len(line) <= 4096:
                try:
                    w.error = str(json.loads(line).get("error", ""))[:2000]
                except Exception:
                    w.error = "unexpected start-up message"
                # the worker exits next; its EOF reports the failure
            else:
                self._retire(w, queue, results, "protocol")
                break
        if got:
            if w.inflight:
                w.deadline = time.monotonic() + self._silence
            if bar is not None:
                bar.update(got)

    def _end_batch(self, w: _Worker, batch: _Batch, line: bytes, queue: deque) -> bool:
        """A batch's end line: time budget, isolation cost, "unavailable" reason, recycling; False if malformed."""
        try:
            end = json.loads(line)
            n, secs, iso, forks = int(end["n"]), float(end["s"]), float(end["iso"]), int(end["forks"])
            kind, error = end["end"], str(end.get("error", ""))[:500]
        except Exception:
            return False
        if kind not in ("done", "recycle"):
            return False
        now = time.monotonic()
        self.batch_latencies.append(now - w.started_at)
        timing = self.timing.setdefault(batch.key, [0, 0.0])
        timing[0], timing[1] = timing[0] + n, timing[1] + secs
        if self.time_budget > 0 and timing[0] >= 2 and timing[1] / timing[0] > self.time_budget * self.timeout:
            mean = timing[1] / timing[0]
            self._disable(batch.key, f"slow: mean call {mean:.3f} s > {self.time_budget:g} x timeout")
        if error:
            if self.unavailable.get(batch.key, "").startswith("a verifier process"):
                logger.warning("verifier %s: calls could not run (%s); they are None", batch.key[:12], error)
            self.unavailable[batch.key] = error
        self.stats["groups"] += 1
        self.stats["processes"] += forks
        self.stats["isolation_s"] += iso
        w.inflight.popleft()
        self._done_with(batch)
        if kind == "recycle":  # the zygote exits; batches it has not read go to another worker
            self.stats["recycled"] += 1
            w.state, w.deadline = "retiring", now + self.start_timeout
            for b in w.inflight:
                self._done_with(b)
            queue.extendleft(reversed(w.inflight))
            w.inflight.clear()
            w.pending = b""
            w.flush(self._sel)
        elif w.inflight:
            self._start_batch(w, now)
        return True

    # ------------------------------------------------------------------ event loop

    def _drain(self, queue: deque, results: list, bar) -> None:
        """No worker can start: every queued call is None, and its verifier is reported."""
        while queue:
            batch = queue.popleft()
            for idx, _ in batch.items:
                results[idx] = None
            reason = self._start_error or "no sandbox worker is available"
            self.stats["unavailable"] += len(batch.items)
            if batch.key not in self.unavailable:
                logger.warning("verifier %s: calls could not run (%s); they are None", batch.key[:12], reason)
            self.unavailable[batch.key] = reason
            if bar is not None:
                bar.update(len(batch.items))

    def _loop(self, queue: deque, codes: dict, results: list, bar) -> None:
        """Drive the workers until the queue is empty and no batch is in flight (and none is starting)."""
        while True:
            for i, w in enumerate(self._workers):
                if w.state == "dead" and queue and self._failed_starts < 3:
                    try:
                        self._workers[i] = w = self._spawn()
                        self.stats["restarts"] += 1
                    except OSError as e:  # e.g. EAGAIN: no process could be made
                        self._failed_starts += 1
                        self._start_error = f"cannot start a sandbox worker: {e}"
                        logger.warning("%s", self._start_error)
                        continue
                while w.state == "ready" and len(w.inflight) < _IN_FLIGHT:
                    batch = self._pick(w, queue, results, bar)
                    if batch is None:
                        break
                    self._send(w, batch, codes)
            waiting = [w for w in self._workers if w.state == "starting" or w.inflight]
            if not waiting and queue and self._failed_starts >= 3:
                if not any(w.state in ("ready", "retiring") for w in self._workers):
                    self._drain(queue, results, bar)
            if not waiting and not queue:
                return
            timed = waiting + [w for w in self._workers if w.state == "retiring"]
            wait = max(0.0, min(w.deadline for w in timed) - time.monotonic()) if timed else 0.05
            for key, _ in self._sel.select(timeout=min(wait, 1.0)):
                w = key.data
                if w.state == "dead":
                    continue
                if key.fd == w.in_fd:
                    w.flush(self._sel)
                else:
                    self._read(w, queue, results, bar)
            now = time.monotonic()
            for w in self._workers:
                if w.state == "dead" or now <= w.deadline or (w.state == "ready" and not w.inflight):
                    continue
                self._read(w, queue, results, bar)  # take in whatever arrived before judging
                if w.state == "dead" or now <= w.deadline or (w.state == "ready" and not w.inflight):
                    continue
                self._retire(w, queue, results, "watchdog")
