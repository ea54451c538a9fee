"""The sandbox worker: a locked-down zygote that runs each verifier's calls in a process holding only that verifier.

Started by `VerifierPool` only, as
    python -I -X utf8 -c "<bootstrap>" '<json config>'      (empty environment; optionally inside bwrap)
The bootstrap imports this module without the `autoif_train` package (nothing outside `sandbox/` is read).

Protocol with the pool (one line per message; the pool is trusted):
  pool -> zygote  {"key": sha1, "code": source, "sizes": [n0, n1, ...], "calls": [text index, ...],
                  "strikes_left": k, "prior": [calls timed, seconds]}, then the distinct responses as raw UTF-8
                  (n0 + n1 + ... bytes). Every call of a batch is for the verifier `key`.
  zygote -> pool  at start: "ready" (or {"error": "..."} if lock-down failed); per call, in order: true | false |
                  null | "timeout" | "crash" | "unavailable" (every 0.2 s in a slow batch, else at its end); after
                  a batch: {"end": "done" | "recycle", "n": calls timed, "s": their seconds, "iso": seconds spent
                  on fork + set-up + module body + kill, "forks": new processes, "error": why "unavailable"}.
The zygote runs no verifier code. For a verifier it has no process for, it forks one (LRU of `keep` per zygote)
that closes every fd but its two pipes, adds a seccomp filter (no fork, no kill), dies with the zygote, runs the
module body and writes S (set up), then L / B (loaded / broken); per batch it reads the responses from its pipe
and writes 1 / 0 / n per call. The zygote reads these bytes against its own clock: a call (or module body) over
`timeout` is "timeout" whatever the byte said; no byte within `timeout + grace` -> SIGKILL and "timeout"; EOF or
a stray byte -> "crash". Those are strikes and the process is replaced; the group stops (rest null) after
`strikes_left` strikes, or once the verifier's mean call time (prior + this batch) exceeds `budget` x timeout.
A verifier can harm only its own results: it shares no process, memory or pipe with another verifier.
"""

from __future__ import annotations

import builtins
import fcntl
import gc
import importlib
import json
import os
import select
import signal
import sys
import time

from autoif_train.sandbox.lockdown import VerifierFilter, _libc, lock_down
from autoif_train.sandbox.scoring import coerce_result

# Imported before lock-down so verifiers find them loaded (later imports from the stdlib still work).
PREIMPORTED = (
    "collections", "datetime", "difflib", "functools", "itertools", "math", "random", "re", "statistics", "string",
    "textwrap", "typing", "unicodedata", "collections.abc", "json",
)  # fmt: skip

TRUE, FALSE, NULL = b"true\n", b"false\n", b"null\n"
TIMEOUT, CRASH, UNAVAILABLE, READY = b'"timeout"\n', b'"crash"\n', b'"unavailable"\n', b'"ready"\n'
_BYTES = {True: b"1", False: b"0", None: b"n"}
_TOKEN = {ord("1"): TRUE, ord("0"): FALSE, ord("n"): NULL}
_SETUP_SECONDS = 2.0  # a verifier process must be set up (before any verifier code runs) by then
_FLUSH = 0.002  # a verifier process writes its result bytes once this long has passed since its last write


class _Timeout(BaseException):
    """Raised inside a verifier by the call timer."""


_INF = float("inf")
_deadline = _INF  # monotonic time at which the running verifier code times out (in a verifier process)


def _on_alarm(signum, frame):
    if time.monotonic() >= _deadline:
        raise _Timeout()


# ---------------------------------------------------------------- the verifier process (after fork)


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _verifier_process(rfd: int, wfd: int, vfilter, code: str, timeout: float) -> None:
    """Hold one verifier: load it, then answer the zygote's batches for it until EOF; never returns."""
    global _deadline
    try:
        lo, hi = sorted((rfd, wfd))
        os.closerange(3, lo)
        os.closerange(lo + 1, hi)
        os.closerange(hi + 1, 1024)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the zygote
        if vfilter is not None:
            vfilter.load()
        os.write(wfd, b"S")
        tick = min(0.05, timeout / 4)
        signal.setitimer(signal.ITIMER_REAL, tick, tick)
        monotonic, out, fn = time.monotonic, bytearray(), None
        try:
            _deadline = monotonic() + timeout
            # a private copy of the builtins, for tidiness only: this process holds no other verifier
            namespace = {"__name__": "__verifier__", "__builtins__": dict(vars(builtins))}
            exec(compile(code, "<verifier>", "exec"), namespace)
            fn = namespace.get("evaluate")
            _deadline = _INF
        except BaseException:  # noqa: BLE001 - a timeout or anything the module body raises
            _deadline = _INF
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        if not callable(fn):
            os.write(wfd, b"B")
            return
        os.write(wfd, b"L")
        while True:
            head = _read_exact(rfd, 4)
            if not head:
                return
            n = int.from_bytes(head, "little")
            sizes = memoryview(_read_exact(rfd, 4 * n)).cast("I")
            payload = _read_exact(rfd, sum(sizes))
            signal.setitimer(signal.ITIMER_REAL, tick, tick)
            last_write, offset = monotonic(), 0
            for size in sizes:
                start = monotonic()
                if start - last_write >= _FLUSH:  # the previous call was slow: let the zygote time it
                    os.write(wfd, out)
                    out.clear()
                    last_write = start
                text = payload[offset : offset + size].decode("utf-8", "surrogatepass")
                offset += size
                try:
                    _deadline = start + timeout
                    try:
                        value = fn(text)
                    finally:
                        _deadline = _INF
                    out += b"1" if value is True else b"0" if value is False else _BYTES[coerce_result(value)]
                except BaseException:  # noqa: BLE001 - exceptions and timeouts are None
                    _deadline = _INF
                    out += b"n"
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            os.write(wfd, out)
            out.clear()
    finally:
        os._exit(0)


# ---------------------------------------------------------------- the zygote


class _Proc:
    """A live verifier process, as the zygote sees it."""

    def __init__(self, pid: int, to_fd: int, from_fd: int):
        self.pid, self.to_fd, self.from_fd, self.fresh = pid, to_fd, from_fd, True

    def kill(self) -> None:
        for fd in (self.to_fd, self.from_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        _children.append(self.pid)


_BROKEN = object()  # LRU marker: this verifier's module body failed or timed out in this zygote
_procs: dict[str, object] = {}  # code hash -> _Proc | _BROKEN, least recently used first
_children: list[int] = []  # killed verifier processes not reaped yet


class _Group:
    """The zygote's run of one batch: feed it to the verifier's process, read its bytes against its own clock."""

    def __init__(self, msg: dict, texts: list[bytes], cfg: dict, chan_out: int, vfilter):
        self.key, self.code, self.cfg = msg["key"], msg["code"], cfg
        self.texts = [texts[i] for i in msg["calls"]]  # UTF-8 bytes, as the pool sent them
        self.strikes_left = int(msg["strikes_left"])
        self.prior_n, self.prior_s = int(msg["prior"][0]), float(msg["prior"][1])
        self.chan_out, self.vfilter = chan_out, vfilter
        self.out: list[bytes] = []
        self.pos = 0  # calls answered
        self.timed_n, self.timed_s, self.iso, self.forks, self.error = 0, 0.0, 0.0, 0, ""
        self.last_flush = time.monotonic()

    def run(self) -> dict:
        while self.pos < len(self.texts):
            if self.strikes_left <= 0 or self._too_slow():
                self._answer_rest(NULL)
                break
            proc = _procs.pop(self.key, None)
            if proc is _BROKEN:
                _procs[self.key] = _BROKEN
                self._answer_rest(NULL)
                break
            if proc is None and (proc := self._start()) is None:
                break
            if self._feed(proc):
                _procs[self.key] = proc
                while len(_procs) > self.cfg["keep"]:
                    old = _procs.pop(next(iter(_procs)))
                    if old is not _BROKEN:
                        old.kill()
            else:
                proc.kill()
        os.write(self.chan_out, b"".join(self.out))
        return {"n": self.timed_n, "s": self.timed_s, "iso": self.iso, "forks": self.forks, "error": self.error}

    def _too_slow(self) -> bool:
        n, budget = self.prior_n + self.timed_n, self.cfg["budget"]
        return budget > 0 and n >= 2 and (self.prior_s + self.timed_s) / n > budget * self.cfg["timeout"]

    def _answer(self, token: bytes, seconds: float | None) -> None:
        self.out.append(token)
        self.pos += 1
        if seconds is not None:
            self.timed_n, self.timed_s = self.timed_n + 1, self.timed_s + seconds
        if token in (TIMEOUT, CRASH):
            self.strikes_left -= 1
        now = time.monotonic()
        if now - self.last_flush > 0.2:  # slow batch: let the pool see the results so far
            os.write(self.chan_out, b"".join(self.out))
            self.out.clear()
            self.last_flush = now

    def _answer_many(self, tokens: list[bytes], seconds: float) -> None:
        """Results read together; the last one took `seconds` (a timeout if over the limit), the others 0."""
        if seconds > self.cfg["timeout"]:
            tokens[-1] = TIMEOUT
            self.strikes_left -= 1
        self.out += tokens
        self.pos += len(tokens)
        self.timed_n, self.timed_s = self.timed_n + len(tokens), self.timed_s + seconds
        now = time.monotonic()
        if now - self.last_flush > 0.2:
            os.write(self.chan_out, b"".join(self.out))
            self.out.clear()
            self.last_flush = now

    def _stray(self, phase: str, seconds: float) -> bool:
        """A byte out of protocol: the verifier process misbehaved (a strike), or failed its set-up."""
        if phase == "setup":
            self.error = "a verifier process failed during set-up"
            self._answer_rest(UNAVAILABLE)
        else:
            self._answer(CRASH, seconds if phase == "calls" else None)
        return False

    def _answer_rest(self, token: bytes) -> None:
        while self.pos < len(self.texts):
            self._answer(token, None)

    def _start(self) -> _Proc | None:
        """Fork a verifier process for this group's verifier (None, and the rest "unavailable", if none can be)."""
        _reap(block=False)
        fds: list[int] = []
        try:
            fds += os.pipe()
            fds += os.pipe()
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            self.error = f"cannot start a verifier process: {e}"
            self._answer_rest(UNAVAILABLE)
            return None
        if pid == 0:
            os.close(fds[1])
            os.close(fds[2])
            _verifier_process(fds[0], fds[3], self.vfilter, self.code, self.cfg["timeout"])
        os.close(fds[0])
        os.close(fds[3])
        os.set_blocking(fds[1], False)
        try:
            fcntl.fcntl(fds[1], fcntl.F_SETPIPE_SZ, 1 << 20)  # a batch's responses usually fit in one write
        except OSError:
            pass
        self.forks += 1
        return _Proc(pid, fds[1], fds[2])

    def _feed(self, proc: _Proc) -> bool:
        """Run the unanswered calls in `proc`; whether it answered them all and may be kept for later batches."""
        timeout, grace = self.cfg["timeout"], self.cfg["grace"]
        rest = self.texts[self.pos :]
        pending = memoryview(
            len(rest).to_bytes(4, "little") + b"".join(len(t).to_bytes(4, "little") for t in rest) + b"".join(rest)
        )
        start = time.monotonic()
        phase = "setup" if proc.fresh else "calls"
        last, deadline = start, start + (_SETUP_SECONDS if proc.fresh else timeout + grace)
        while True:
            if pending:
                try:
                    pending = pending[os.write(proc.to_fd, pending) :]
                except BlockingIOError:
                    pass
                except OSError:
                    pending = pending[:0]  # it exited; its EOF tells
            wait = max(0.0, deadline - time.monotonic())
            ready, writable, _ = select.select([proc.from_fd], [proc.to_fd] if pending else [], [], wait)
            now = time.monotonic()
            if writable and not ready:
                continue
            chunk = os.read(proc.from_fd, 4096) if ready else None
            if not chunk:  # exited, or silent past its deadline (then it is killed)
                if phase == "setup":
                    self.error = "a verifier process failed during set-up"
                    self._answer_rest(UNAVAILABLE)
                elif phase == "load" and chunk is None:
                    self._answer(TIMEOUT, None)
                    _procs[self.key] = _BROKEN
                    self._answer_rest(NULL)
                else:
                    self._answer(CRASH if chunk == b"" else TIMEOUT, now - last if phase == "calls" else None)
                return False
            i = 0
            while phase != "calls" and i < len(chunk):  # set-up and load events: one byte each
                byte, i = chunk[i], i + 1
                if phase == "setup" and byte == ord("S"):
                    phase, last = "load", now
                    self.iso += now - start
                elif phase == "load" and byte in (ord("L"), ord("B")):
                    self.iso += now - last
                    if now - last > timeout or byte == ord("B"):
                        if now - last > timeout:
                            self._answer(TIMEOUT, None)
                        _procs[self.key] = _BROKEN
                        self._answer_rest(NULL)
                        return False
                    phase, last, proc.fresh = "calls", now, False
                else:
                    return self._stray(phase, 0.0)
            if phase == "calls" and i < len(chunk):
                # result bytes that arrive together: the last one carries the time since the previous read
                body = chunk[i : i + len(self.texts) - self.pos]
                if body.translate(None, b"10n"):
                    return self._stray(phase, now - last)
                self._answer_many([_TOKEN[b] for b in body], now - last)
                if self.pos == len(self.texts):
                    return i + len(body) == len(chunk) and not pending
                if self.strikes_left <= 0 or self._too_slow():
                    return False
            last = now if phase == "calls" else last
            deadline = last + (timeout + grace if phase != "setup" else _SETUP_SECONDS)


def _reap(block: bool) -> None:
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.remove(pid)


class _Reader:
    """Unbuffered-by-libc line and byte reads from the pool's pipe, so the zygote knows when it is idle."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, bytearray()

    def _fill(self) -> bool:
        if not self.buf and not select.select([self.fd], [], [], 0)[0]:
            _reap(block=True)  # idle: reap now, off the critical path
        chunk = os.read(self.fd, 1 << 16)
        self.buf += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                return b""
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        data, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return data


def serve(cfg: dict, chan_in: int, chan_out: int, vfilter) -> None:
    """Answer batches until the pool closes the channel or this zygote decides to be recycled."""
    cfg = dict(cfg, timeout=float(cfg["timeout"]), grace=float(cfg["grace"]), budget=float(cfg["budget"]))
    cfg["keep"] = int(cfg["keep"])
    recycle_calls, cpu_budget = int(cfg["recycle_after"]), float(cfg["cpu_seconds"]) / 2
    reader, done = _Reader(chan_in), 0
    while True:
        line = reader.readline()
        if not line:
            return
        msg = json.loads(line)
        payload = reader.read(sum(msg["sizes"]))
        texts, offset = [], 0
        for size in msg["sizes"]:
            texts.append(payload[offset : offset + size])
            offset += size
        end = _Group(msg, texts, cfg, chan_out, vfilter).run()
        done += len(msg["calls"])
        end["end"] = "recycle" if done >= recycle_calls or time.process_time() > cpu_budget else "done"
        os.write(chan_out, json.dumps(end).encode() + b"\n")
        if end["end"] == "recycle":
            return


def main(argv: list[str] | None = None) -> None:
    """Move the channel off fds 0/1, pre-import, lock down, say "ready", serve."""
    argv = argv if argv is not None else sys.argv[1:]
    cfg = json.loads(argv[0])
    chan_in, chan_out = os.dup(0), os.dup(1)
    devnull_r, devnull_w = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull_r, 0)
    os.dup2(devnull_w, 1)
    os.dup2(devnull_w, 2)
    os.close(devnull_r)
    os.close(devnull_w)
    sys.dont_write_bytecode = True
    for name in PREIMPORTED:
        importlib.import_module(name)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        vfilter = VerifierFilter() if cfg["isolation"] != "none" else None
        lock_down(cfg["isolation"], int(cfg["memory_mb"]), int(cfg["cpu_seconds"]), cfg.get("read_paths"))
    except BaseException as e:  # noqa: BLE001 - reported to the pool, which refuses to run
        os.write(chan_out, (json.dumps({"error": f"{type(e).__name__}: {e}"[:2000]}) + "\n").encode())
        os._exit(3)
    sys.path[:] = [p for p in sys.path if "-packages" not in p]  # unreadable now anyway
    gc.freeze()  # what the zygote holds now is never collected, so verifier processes do not copy it
    os.write(chan_out, READY)
    serve(cfg, chan_in, chan_out, vfilter)
    os._exit(0)


if __name__ == "__main__":
    main()
