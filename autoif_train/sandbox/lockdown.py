"""What a sandbox worker does to itself before it runs any untrusted code, and the checks that it can.

Isolation modes (`VerifierPool(isolation=...)`):
  "seccomp" (default)  rlimits + drop root + Landlock + seccomp, described below.
  "bwrap"              the same, inside bubblewrap (`bwrap --unshare-all --new-session --ro-bind / / --tmpfs /tmp
                       --clearenv --cap-drop ALL`, uid 65534): its own pid, network, ipc and user namespaces.
  "none"               rlimits + drop root + empty environment only (no Landlock, no seccomp: a verifier can
                       fork, write files, open sockets, ptrace its zygote); must be chosen explicitly.

A worker is a zygote: it locks itself down, then forks one process per verifier (see `worker.py`). Applied in the
zygote, in this order, and inherited by every verifier process:
  - rlimits (soft = hard, so they cannot be raised): address space (default 1 GiB) and CPU seconds per process,
    64 open files, no core dumps, file size 0; when root, RLIMIT_NPROC 256 for the sandbox uid (it counts every
    task of nobody on the host; the pool adds a pids cgroup per worker, `max_tasks`, where one can be made);
  - when running as root: drop to uid/gid 65534 (nobody) with no supplementary groups; if nobody cannot read the
    Python installation (e.g. pyenv under /root), keep only CAP_DAC_READ_SEARCH, bounded by Landlock to the
    read-only paths below (mode "none": stay uid 0 with no capability instead);
  - Landlock: read-only access to system libraries (/usr, /lib, ...), the interpreter's stdlib (not its
    site-packages) and the sandbox package only. The checkout root, .git, outputs/, runs/, the venv (site-packages
    included: the worker imports what it needs first), home directories and /proc are unreadable, nothing is
    writable; no TCP bind/connect; no signals to, or abstract unix sockets of, processes outside the sandbox
    (Landlock ABI >= 4 / >= 6 where the kernel has it);
  - seccomp (EPERM): socket/socketpair/connect/bind/listen/accept, execve/execveat, tkill/tgkill/pidfd_*/
    rt_sigqueueinfo, ptrace/process_vm_*, open/openat/creat with write, create, truncate or append flags (openat2
    -> ENOSYS), unlink/rename/mkdir/rmdir/link/symlink/mknod/chmod/chown/truncate/utime/xattr writes,
    mount/umount/unshare/setns/chroot/pivot_root, setsid/setpgid, raising rlimits, io_uring, bpf,
    perf_event_open, userfaultfd, memfd_create, memfd_secret, keyctl, SysV IPC (shm*, msg*, sem*, ipc), POSIX
    message queues (mq_*), module/kexec/reboot/swap calls; clone3 -> ENOSYS so libc uses clone.
  - each verifier process adds a second filter: fork/vfork, clone without CLONE_THREAD (threads are allowed) and
    kill. So nothing a verifier makes (files, IPC objects, processes, keys) outlives its process.
The zygote starts with an empty environment and stdin/stdout/stderr on /dev/null; a verifier process keeps only
its own two pipe fds to the zygote.

Integrity (seccomp and bwrap modes): a verifier process holds one verifier and nothing that reaches another's
results (no shared memory, no other pipe, no ptrace or signals), so patched modules or builtins, swapped
`__code__`, rewritten frames, threads left running and forged pipe bytes change only its own results. Timing and
strikes come from the zygote's clock, which runs no verifier code.

Not protected against: kernel exploits through the syscalls that stay allowed; reading what is readable (system
files under /usr, the stdlib); CPU and memory use up to the limits (a zygote keeps up to `keep_processes` idle
verifier processes, each under the address-space limit); a verifier lying about or timing its own results, or
reading the responses of its own batch; in mode "none", any of the integrity guarantees. Results carry only
true/false/null, so a verifier cannot make the caller run code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import shutil
import sys

ISOLATION_MODES = ("seccomp", "bwrap", "none")
NOBODY = 65534
NPROC = 256  # RLIMIT_NPROC of the sandbox uid: a backstop; the per-worker pids cgroup is the real cap


class IsolationUnavailable(RuntimeError):
    """The requested isolation cannot be set up on this machine (and the pool refuses to run without it).

    Not an `AutoIFError` (this module is loaded without the package inside the sandbox); `exit_code` makes the
    commands report it as one line, like bad input (choose another `isolation`)."""

    exit_code = 2


# ---------------------------------------------------------------- checks (run in the caller, apply nothing)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel; 0 when Landlock is missing or disabled."""
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(abi), 0)


def seccomp_problem() -> str | None:
    """Why seccomp filters cannot be used here, or None when they can."""
    try:
        with open("/proc/self/status") as f:
            if not any(line.startswith("Seccomp:") for line in f):
                return "the kernel has no seccomp support (no 'Seccomp:' in /proc/self/status)"
    except OSError as e:
        return f"cannot read /proc/self/status: {e}"
    try:
        import pyseccomp  # noqa: F401  (loads libseccomp.so.2 through ctypes)
    except Exception as e:  # ImportError, OSError (library missing)
        return f"libseccomp is not usable ({e}); install the Debian package libseccomp2 and `pip install pyseccomp`"
    return None


def bwrap_path() -> str | None:
    """Path of the `bwrap` binary, or None."""
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.access(p, os.X_OK)), None)


def check_isolation(mode: str) -> None:
    """Raise IsolationUnavailable (with what is missing and how to proceed) unless `mode` can run here."""
    if mode not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {mode!r}")
    if mode == "none":
        return
    hint = "Fix this, or pass isolation='none' (`isolation: none`) to run verifiers with rlimits only."
    problem = seccomp_problem()
    if problem is None and landlock_abi() < 1:
        problem = "the kernel has no Landlock (needs Linux >= 5.13 with landlock in the lsm= boot list)"
    if problem is None and mode == "bwrap" and bwrap_path() is None:
        problem = "the `bwrap` binary was not found (apt-get install bubblewrap)"
    if problem is not None:
        raise IsolationUnavailable(f"isolation={mode!r} is not available: {problem}. {hint}")


def _paths_hidden_by_tmp() -> list[str]:
    """Interpreter, venv, package and sys.path folders that live under /tmp, which bwrap replaces by a tmpfs."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [sys.prefix, sys.base_prefix, os.path.dirname(sys.executable), package_root, *sys.path]
    found = set()
    for path in candidates:
        if not path or not os.path.isdir(path):
            continue
        for variant in {os.path.abspath(path), os.path.realpath(path)}:
            if variant == "/tmp" or variant.startswith("/tmp/"):
                found.add(variant)
    roots = sorted(found, key=len)
    return [p for i, p in enumerate(roots) if not any(p.startswith(r + "/") for r in roots[:i])]


def bwrap_prefix(uid: int) -> list[str]:
    """The bubblewrap command line that wraps a worker (`uid` = the caller's uid)."""
    cmd = [bwrap_path() or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/"]
    cmd += ["--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc", "--clearenv", "--cap-drop", "ALL"]
    for path in _paths_hidden_by_tmp():  # e.g. a checkout or venv under /tmp: keep it visible, read-only
        cmd += ["--ro-bind", path, path]
    if uid == 0:
        cmd += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    return cmd + ["--"]


def pids_cgroup(name: str, max_tasks: int) -> str | None:
    """Create a pids cgroup `name` (v1, or v2 where this process's cgroup delegates pids) with pids.max =
    `max_tasks`, next to this process's own; its folder, or None where none can be made (e.g. not root)."""
    try:
        with open("/proc/self/cgroup") as f:
            own = dict(line.rstrip("\n").split(":", 2)[1:] for line in f if line.count(":") >= 2)
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:4] for line in f]
        for where, fstype, options in mounts:
            if fstype == "cgroup" and "pids" in options.split(",") and "pids" in own:
                base = where + own["pids"]
            elif fstype == "cgroup2" and "" in own:
                base = where + own[""]
                with open(os.path.join(base, "cgroup.subtree_control")) as f:
                    if "pids" not in f.read().split():
                        continue
            else:
                continue
            base = base.rstrip("/") or "/"
            for old in os.listdir(base):  # left by pools whose process ended without close(): empty, remove
                owner = old.split("-")[2] if old.startswith("autoif-sandbox-") else ""
                if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                    remove_cgroup(os.path.join(base, old))
            path = os.path.join(base, name)
            os.mkdir(path, 0o755)
            if not set_pids_max(path, max_tasks):
                os.rmdir(path)
                return None
            return path
    except (OSError, ValueError):
        pass
    return None


def set_pids_max(path: str, max_tasks: int) -> bool:
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_tasks))
        return True
    except OSError:
        return False


def remove_cgroup(path: str | None) -> bool:
    """Remove a cgroup made by pids_cgroup once its tasks are gone; whether it is gone."""
    if not path:
        return True
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- applied in the worker


def apply_rlimits(memory_mb: int, cpu_seconds: int) -> None:
    """Address space, CPU seconds (per process), open files, core and file size limits, soft = hard; when root
    (about to become nobody), also RLIMIT_NPROC, which counts every task of that uid on the host."""
    limits = {
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_FSIZE: 0,
    }
    if os.geteuid() == 0:
        limits[resource.RLIMIT_NPROC] = NPROC
    for res, value in limits.items():
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))


def _nobody_can_read(path: str) -> bool:
    """Whether uid 65534 could reach and read `path` (by the 'other' permission bits along the way)."""
    path = os.path.realpath(path)
    try:
        parts = path.split(os.sep)
        for i in range(2, len(parts)):
            if not os.stat(os.sep.join(parts[:i]) or "/").st_mode & 0o001:
                return False
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def set_capabilities(mask: int) -> None:
    """Set the effective and permitted capability sets to `mask` (bits of CAP_*), inheritable to none."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    data[0].effective = data[0].permitted = mask
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


CAP_DAC_READ_SEARCH = 2


def drop_root(read_paths: list[str], landlocked: bool) -> str:
    """When running as root, become uid/gid 65534 (nobody) with no supplementary groups.

    If nobody cannot read `read_paths` (e.g. Python installed under /root) the worker keeps exactly one
    capability, CAP_DAC_READ_SEARCH, so it can still import; only when Landlock (`landlocked`) then limits reads
    to `read_paths` (seccomp also denies open_by_handle_at). Without Landlock it stays uid 0 with no capability.
    Returns "nobody", "nobody+read-search", "root-no-caps" or "unchanged".
    """
    if os.geteuid() != 0:
        return "unchanged"
    readable = all(_nobody_can_read(p) for p in read_paths)
    if not readable and not landlocked:
        set_capabilities(0)
        return "root-no-caps"
    if not readable:
        _check(_libc.prctl(8, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    if readable:
        return "nobody"
    set_capabilities(1 << CAP_DAC_READ_SEARCH)
    _check(_libc.prctl(8, 0, 0, 0, 0), "PR_SET_KEEPCAPS")
    return "nobody+read-search"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/urandom",
)
SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))


def stdlib_paths() -> list[str]:
    """The interpreter's standard library: each entry of its folder but `site-packages`, plus its zip if any."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    out = [p for p in sys.path if p.endswith(".zip") and os.path.isfile(p)]
    try:
        out += [
            os.path.join(stdlib, e) for e in sorted(os.listdir(stdlib)) if e not in ("site-packages", "dist-packages")
        ]
    except OSError:
        pass
    return out


def read_paths(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What a worker may read: system libraries, the interpreter's stdlib, the sandbox package, and `extra`."""
    paths = list(SYSTEM_READ_PATHS) + stdlib_paths() + [SANDBOX_DIR] + list(extra)
    out, seen = [], set()
    for p in paths:
        real = os.path.realpath(p)
        if os.path.exists(real) and real not in seen:
            seen.add(real)
            out.append(real)
    return out


def apply_landlock(paths: list[str]) -> int:
    """Read-only access to `paths` only (nothing else readable, nothing writable), no TCP connect/bind, signals
    and abstract unix sockets scoped to the sandbox; returns the Landlock ABI used."""
    abi = landlock_abi()
    if abi < 1:
        raise IsolationUnavailable("Landlock is not available in this kernel")
    fs = (1 << 13) - 1  # ABI 1: execute .. make_sym
    fs |= (1 << 13) if abi >= 2 else 0  # refer
    fs |= (1 << 14) if abi >= 3 else 0  # truncate
    fs |= (1 << 15) if abi >= 5 else 0  # ioctl_dev
    attr = _RulesetAttr(fs=fs, net=3 if abi >= 4 else 0, scoped=3 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0), "ll")
    read_file, read_dir = 1 << 2, 1 << 3
    try:
        for path in paths:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = read_file | read_dir if os.path.isdir(path) else read_file
                rule = _PathBeneath(allowed=allowed, parent_fd=fd)
                _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), f"rule {path}")
            finally:
                os.close(fd)
        _check(_libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


_DENY_ALWAYS = """
socket socketpair connect bind listen accept accept4 execve execveat tkill tgkill rt_sigqueueinfo
rt_tgsigqueueinfo pidfd_open pidfd_send_signal pidfd_getfd ptrace process_vm_readv process_vm_writev creat unlink
unlinkat rename renameat renameat2 mkdir mkdirat rmdir link linkat symlink symlinkat mknod mknodat chmod fchmod
fchmodat fchmodat2 chown fchown fchownat lchown truncate ftruncate utime utimes utimensat futimesat setxattr
lsetxattr fsetxattr removexattr lremovexattr fremovexattr mount umount2 move_mount fsopen fsmount fsconfig open_tree
unshare setns chroot pivot_root setsid setpgid setrlimit io_uring_setup io_uring_enter io_uring_register bpf
perf_event_open userfaultfd memfd_create memfd_secret keyctl add_key request_key init_module finit_module
delete_module kexec_load kexec_file_load reboot swapon swapoff acct quotactl name_to_handle_at open_by_handle_at
shmget shmat shmdt shmctl msgget msgsnd msgrcv msgctl semget semop semtimedop semctl ipc mq_open mq_unlink
mq_timedsend mq_timedreceive mq_notify mq_getsetattr
""".split()
_DENY_IN_VERIFIER = "fork vfork kill".split()  # the zygote forks and kills its verifier processes; they cannot


def _filter(zygote: bool):
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)

    def deny(name, *args, action=eperm):
        try:
            f.add_rule(action, name, *args)
        except (ValueError, RuntimeError, OSError):  # syscall unknown on this architecture
            pass

    if not zygote:  # a verifier process: only what the zygote's filter (already loaded, inherited) allows
        for name in _DENY_IN_VERIFIER:
            deny(name)
        deny("clone", sc.Arg(0, sc.MASKED_EQ, 0x00010000, 0))  # CLONE_THREAD not set -> a new process
        return f
    for name in _DENY_ALWAYS:
        deny(name)
    deny("clone3", action=sc.ERRNO(errno.ENOSYS))  # libc falls back to clone, which the rules can inspect
    deny("openat2", action=sc.ERRNO(errno.ENOSYS))
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND):
        deny("open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        deny("openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    deny("prlimit64", sc.Arg(2, sc.NE, 0))  # setting (not reading) a limit
    return f


def apply_seccomp() -> None:
    """Load the zygote's deny-list filter described in the module docstring (EPERM; clone3/openat2 -> ENOSYS)."""
    _filter(zygote=True).load()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class VerifierFilter:
    """The extra seccomp filter of a verifier process (no fork, no kill), compiled once in the zygote so that
    loading it after each fork is one prctl call."""

    def __init__(self):
        r, w = os.pipe()
        try:
            _filter(zygote=False).export_bpf(type("Fd", (), {"fileno": lambda self: w})())
            os.close(w)
            w = -1
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        self._prog = ctypes.create_string_buffer(data, len(data))
        self._fprog = _SockFprog(len(data) // 8, ctypes.addressof(self._prog))

    def load(self) -> None:
        _check(_libc.prctl(22, 2, ctypes.byref(self._fprog), 0, 0), "PR_SET_SECCOMP")  # SECCOMP_MODE_FILTER


def lock_down(mode: str, memory_mb: int, cpu_seconds: int, extra_read_paths: list[str] | None = None) -> str:
    """Apply everything for `mode` to the current process (irreversible); returns what happened to root.

    Raises on any failure (the worker then reports the error and exits before running a verifier)."""
    paths = read_paths(extra_read_paths or ())
    if mode != "none":
        import pyseccomp  # noqa: F401  (load libseccomp while the filesystem is still open)
    apply_rlimits(memory_mb, cpu_seconds)
    try:
        user = drop_root(paths, landlocked=mode != "none")
    except OSError as e:
        if mode != "none":
            raise IsolationUnavailable(f"cannot drop root privileges: {e}") from e
        user = "unchanged"
    if mode != "none":
        apply_landlock(paths)
        apply_seccomp()
    return user
