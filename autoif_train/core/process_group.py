"""Tearing down the torch.distributed process group before the interpreter exits (`run_command` does it for every
command).

Why: a gloo worker thread drops a finished collective (and its tensors) just after the caller's wait returns. If
the interpreter is finalizing by then, the tensor's Python object cannot take the GIL and the process aborts
("terminate called without an active exception", SIGABRT) after the job succeeded - measured on 2 CPU ranks in 7 of
25 exits. Destroying the group joins those threads, unless something still references it (ZeRO-3's model loading
leaves references this code cannot reach); then the workers are given time to go idle while the interpreter is
still alive.

Not protected against: NCCL groups are only destroyed (no barrier, no wait); a failed multi-rank run is left to
the launcher (a peer may be inside a collective).
"""

from __future__ import annotations

import gc
import os
import sys
import time

GLOO_WORKER = "pt_gloo_runloop"  # the thread name ProcessGroupGloo gives its workers


def _gloo_workers_busy() -> bool | None:
    """Whether any gloo worker thread of this process is running (not asleep); None where /proc is unavailable."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    busy = False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().strip() != GLOO_WORKER:
                    continue
            with open(f"/proc/self/task/{tid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # the thread ended meanwhile
            continue
        busy |= state not in ("S", "D")
    return busy


def wait_for_idle_gloo_workers(timeout: float = 1.0, poll: float = 0.005, settled: int = 3) -> None:
    """Sleep (GIL released, so a worker can finish dropping its last collective) until every gloo worker has been
    asleep for `settled` polls in a row, or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < settled and time.monotonic() < deadline:
        time.sleep(poll)
        busy = _gloo_workers_busy()
        if busy is None:  # no /proc: a fixed grace period instead
            time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
            return
        quiet = 0 if busy else quiet + 1


def release_process_group(after_error: bool = False) -> None:
    """Destroy the default process group, if this process opened one. On success every rank gets here: gloo ranks
    first meet at a barrier, so none closes its connections while a peer still uses them. `after_error`: only when
    this process is the whole group (with peers, a collective still in flight could hold the teardown until the
    group's timeout, and the launcher stops the other ranks anyway)."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for a command that did not
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    several = dist.get_world_size() > 1
    if after_error and several:
        return
    gloo = dist.get_backend() == "gloo"
    if gloo and several:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that already failed; the launcher reports it
            pass
    dist.destroy_process_group()
    gc.collect()  # references in dropped cycles (ZeRO-3 parameters hold their group) go now
    if gloo:
        wait_for_idle_gloo_workers()
