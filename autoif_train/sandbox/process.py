"""The pool's handle on one zygote process (see `worker.py`): start it (in its cgroup), kill it, reap it."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections import deque

from autoif_train.sandbox.lockdown import remove_cgroup


class Batch:
    """Calls of one verifier sent to a zygote together."""

    __slots__ = ("key", "items", "tries")

    def __init__(self, key: str, items: list[tuple[int, str]], tries: int = 0):
        self.key, self.items, self.tries = key, items, tries  # items: (call index, response)


class ZygoteProcess:
    """One zygote process and this process's view of it."""

    def __init__(self, cmd: list[str], cgroup: str | None):
        # stderr: only what is printed before the worker points fd 2 at /dev/null (bwrap or start-up errors)
        self.stderr = tempfile.TemporaryFile()
        self.cgroup = cgroup
        if cgroup:  # join the cgroup before exec, so that everything the worker (or bwrap) starts is in it
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && unset PWD && exec "$@"', cgroup] + cmd
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={}, cwd="/", start_new_session=True, close_fds=True,
        )  # fmt: skip
        self.out_fd, self.in_fd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.in_fd, False)
        self.state = "starting"  # starting | ready | retiring | dead
        self.buf = b""  # received bytes of an incomplete line
        self.pending = b""  # bytes still to write
        self.inflight: deque[Batch] = deque()  # batches sent and not finished
        self.pos = 0  # position in the first in-flight batch of the next expected result
        self.deadline = 0.0  # no message by then -> watchdog
        self.started_at = 0.0
        self.error = ""
        self.serial = 0  # which spawn of the pool this is (verifier processes it holds are tracked by it)

    def startup_stderr(self) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read(4000).decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def forget(self, sel) -> None:
        """Stop watching this worker's pipes in the selector `sel`."""
        for fd in (self.out_fd, self.in_fd):
            if fd in sel.get_map():
                sel.unregister(fd)

    def flush(self, sel) -> None:
        """Write as much pending data as the pipe takes; watch the pipe for writability while some is left."""
        if self.pending:
            try:
                n = os.write(self.in_fd, self.pending)
                self.pending = self.pending[n:]
            except BlockingIOError:
                pass
            except OSError:
                self.pending = b""  # the worker died; its EOF is handled by the reader
        watched = self.in_fd in sel.get_map()
        if self.pending and not watched:
            sel.register(self.in_fd, selectors.EVENT_WRITE, self)
        elif not self.pending and watched:
            sel.unregister(self.in_fd)

    def close_input(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def stop(self, end: float) -> None:
        """Wait until `end` (monotonic) for the worker to exit, then kill it."""
        try:
            self.proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                kill()
            except OSError:
                pass
        self.reap()

    def reap(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(20):  # its killed process group may take a moment to leave the cgroup
            if remove_cgroup(self.cgroup):
                self.cgroup = None
                break
            time.sleep(0.01)
        self.state = "dead"
