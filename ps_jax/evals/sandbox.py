"""Run untrusted generated code (solution + tests) in a sandboxed child Python.

`run_code(program, timeout_s)` never raises for a bad program; it returns (passed, detail).

Layers of containment, strongest available first (probed once per process, see
`sandbox_isolation()`):

* Namespaces (util-linux `unshare`): new pid namespace (killing its init kills every process
  the program started, even ones that left our process group), new network namespace (only a
  downed loopback: no network), new mount namespace with a private /proc and fresh size-capped
  tmpfs over /tmp, /var/tmp and /dev/shm (the program cannot fill the host disk or leave files
  behind). As root the namespaces are made directly; otherwise inside a new user namespace.
* A fresh unprivileged uid per run when we are root. The kernel does not enforce RLIMIT_NPROC
  for root, so without this a fork bomb would be unbounded; with a uid of its own the process
  limit counts only this run's processes, and the program cannot write root's files. When the
  interpreter lives under a directory other users cannot enter (e.g. /root/.pyenv), that
  directory is shadowed by an empty tmpfs inside the mount namespace and only the interpreter's
  prefix is bind-mounted back, so the rest of it stays hidden.
* rlimits: CPU time, address space, processes, file size, open files, no core dumps.
* A wall-clock timeout that SIGKILLs the whole process group; stdout+stderr are read up to a
  byte cap and the run is killed past it; an environment with none of the parent's variables.

A small bootstrap script (`_BOOT`) runs first inside the namespaces (as root when we are root):
it does the mounts, forks the program (rlimits set, uid dropped, then exec of `python -I`),
waits for it and kills whatever it left behind. Doing this in a separate process rather than
`preexec_fn` keeps `run_code` safe to call from several threads.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

__all__ = ["run_code", "sandbox_isolation", "SandboxLimits"]


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. Sizes in bytes."""

    memory_bytes: int = 1 << 30  # RLIMIT_AS
    max_processes: int = 64  # RLIMIT_NPROC (tasks, threads included)
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE, per file
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 64 << 10  # stdout + stderr read before the run is killed
    tmpfs_bytes: int = 64 << 20  # size of each fresh tmpfs (/tmp, /var/tmp, /dev/shm)


_DEFAULT_LIMITS = SandboxLimits()
_DETAIL_TAIL_CHARS = 2000
_GRACE_S = 2.0  # for the bootstrap to kill the program's processes before we SIGKILL the group
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
# Fresh uids come from a range no distribution allocates, so a run's processes are only its own.
_UID_BASE, _UID_SPAN = 1_500_000_000, 100_000_000

# Runs first (python -I -S boot.py plan.json); the plan is made by `_build_argv`.
_BOOT = r"""
import ctypes, json, os, resource, sys
with open(sys.argv[1]) as f:
    plan = json.load(f)
with open(plan["program_src"], "rb") as f:
    program = f.read()
MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 2, 4, 4096, 8192, 16384
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, dst, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s: %s" % (dst, os.strerror(err)))
# Make the interpreter reachable for the unprivileged uid: bind its prefixes aside, shadow the
# unreadable ancestor with an empty tmpfs, move the binds back to their original paths.
staged = []
for i, prefix in enumerate(plan["rebind"]):
    stage = os.path.join(plan["stage_dir"], str(i))
    os.mkdir(stage)
    mount(prefix, stage, None, MS_BIND | MS_REC, None)
    staged.append((stage, prefix))
for shadow in plan["shadow"]:
    mount("tmpfs", shadow, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
for stage, prefix in staged:
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    mount(stage, prefix, None, MS_MOVE, None)
for d in plan["tmpfs"]:
    mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=%d" % plan["tmpfs_bytes"])
os.makedirs(plan["workdir"], mode=0o700, exist_ok=True)
path = os.path.join(plan["workdir"], "program.py")
with open(path, "wb") as f:
    f.write(program)
uid = plan["uid"]
if uid is not None:
    os.chown(plan["workdir"], uid, uid)
    os.chown(path, uid, uid)
os.chdir(plan["workdir"])
def start():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    for name, soft, hard in plan["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.execve(plan["python"], [plan["python"], "-I", path], plan["env"])
# The program runs in a child; we stay (root if we are root: it cannot signal or trace us) to
# (1) keep the program off pid 1 of a new pid namespace, where the kernel drops
#     default-action signals (SIGTERM, SIGALRM, ...) sent from inside;
# (2) kill every process the program leaves behind, also ones that left the process group
#     (setsid): in a pid namespace by exiting; else, as child subreaper that inherits them,
#     by kill(-1) under the program's uid, or by sweeping the re-parented orphans;
# (3) stop the program when our stdin (a pipe the harness never writes) closes: the harness
#     timed out or died;
# (4) pass the program's status on, a signal death as 128 + signal.
PR_SET_CHILD_SUBREAPER = 36
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
child = os.fork()
if child == 0:
    try:
        start()
    finally:
        os._exit(127)
def watch_harness():
    while os.read(0, 1):
        pass
    os.kill(child, 9)
import threading
threading.Thread(target=watch_harness, daemon=True).start()
_, status = os.waitpid(child, 0)
def children():
    me, out = str(os.getpid()), []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % pid) as f:
                if pid.isdigit() and f.read().rsplit(")", 1)[1].split()[1] == me:
                    out.append(int(pid))
        except (OSError, IndexError):
            pass
    return out
def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
if os.getpid() == 1:
    pass  # our exit makes the kernel kill every process left in the namespace, at once
elif uid is not None:
    # kill(-1) from the program's own uid reaches exactly its processes, in one sweep.
    helper = os.fork()
    if helper == 0:
        os.setgroups([]); os.setgid(uid); os.setuid(uid)
        os.kill(-1, 9)
        os._exit(0)
    os.waitpid(helper, 0)
    reap()
else:
    for _ in range(100):  # killing a child re-parents its own children to us: repeat
        kids = children()
        if not kids:
            break
        for pid in kids:
            os.kill(pid, 9)
        reap()
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


@dataclass(frozen=True)
class _Isolation:
    """One way of running the sandbox; `describe` is what `detail` reports."""

    unshare: tuple[str, ...]  # argv prefix, () for none
    drop_uid: bool
    mount_ns: bool
    pid_ns: bool
    net_ns: bool
    rebind: tuple[str, ...] = ()
    shadow: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = []
        if self.pid_ns or self.net_ns or self.mount_ns:
            parts.append("namespaces: " + ",".join(
                n for n, on in (("pid", self.pid_ns), ("net", self.net_ns),
                                ("mount+tmpfs", self.mount_ns)) if on))
        if self.drop_uid:
            parts.append("fresh uid")
        parts.append("rlimits")
        return "; ".join(parts + list(self.notes))


def _new_uid() -> int:
    return _UID_BASE + random.randrange(_UID_SPAN)


def _env(workdir: str) -> dict[str, str]:
    # Nothing from the parent leaks in. (-I already ignores PYTHON* variables, so no hash seed.)
    # One BLAS/OpenMP thread: threads count against RLIMIT_NPROC, and per-thread buffers
    # against RLIMIT_AS (numpy's OpenBLAS would reserve them for every core).
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": "/tmp", "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _interpreter_prefixes() -> list[str]:
    """Directories the child interpreter must read: the exec chain, stdlib, site-packages."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                           sys.base_exec_prefix)}
    paths.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    # Keep outermost prefixes only (a bind of an outer one carries the inner ones).
    return sorted(p for p in paths
                  if not any(q != p and p.startswith(q.rstrip("/") + "/") for q in paths))


def _blocking_ancestor(path: str) -> str | None:
    """Topmost directory on the way to `path` (inclusive) that other users cannot enter."""
    cur = "/"
    for part in path.strip("/").split("/"):
        cur = os.path.join(cur, part)
        try:
            if not os.stat(cur).st_mode & 0o001:
                return cur
        except OSError:
            return cur
    return None


def _candidates() -> list[_Isolation]:
    unshare = shutil.which("unshare")
    is_root = os.geteuid() == 0
    out: list[_Isolation] = []
    prefixes = _interpreter_prefixes()
    blocked = {p: _blocking_ancestor(p) for p in prefixes}
    rebind = tuple(p for p, a in blocked.items() if a is not None)
    # A prefix that is itself closed to others cannot be fixed by a bind mount.
    fixable = all(a not in (p, "/") for p, a in blocked.items() if a is not None)
    ns_flags = ("--mount", "--propagation", "private", "--net", "--pid", "--fork",
                "--kill-child", "--mount-proc")
    if unshare and is_root and fixable:
        out.append(_Isolation((unshare, *ns_flags), True, True, True, True, rebind,
                              tuple(sorted({blocked[p] for p in rebind}))))
    if unshare and not is_root:
        out.append(_Isolation((unshare, "--user", "--map-root-user", *ns_flags),
                              False, True, True, True))
    if is_root and not rebind:
        out.append(_Isolation((), True, False, False, False))
    if not is_root:
        out.append(_Isolation((), False, False, False, False,
                              notes=("process limit shared with the user's own processes",)))
    if is_root:
        # Last resort: RLIMIT_NPROC is not enforced for root, a fork bomb is only bounded by time.
        out.append(_Isolation((), False, False, False, False,
                              notes=("UNSAFE: root without namespaces, process limit not enforced",)))
    return out


def _count_own_tasks() -> int:
    """Tasks (threads) of our real uid; RLIMIT_NPROC counts them all without a user namespace."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def _build_argv(iso: _Isolation, host_dir: str, timeout_s: float, limits: SandboxLimits,
                uid: int | None) -> list[str]:
    """Write the bootstrap and its plan into host_dir; return the command line."""
    cpu = max(1, math.ceil(timeout_s)) + 1  # a backstop: the wall-clock timeout comes first
    nproc = limits.max_processes
    if not iso.drop_uid and not iso.unshare:
        nproc += _count_own_tasks()  # the limit is per user here, not per run
    rlimits = [
        ("RLIMIT_CPU", cpu, cpu + 1),  # soft: SIGXCPU, hard: SIGKILL
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_NPROC", nproc, nproc),
        ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
        ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
        ("RLIMIT_CORE", 0, 0),
    ]
    tmpfs: list[str] = []
    if iso.mount_ns:
        # A world-writable dir holding the interpreter cannot be shadowed; keep it then.
        tmpfs = [d for d in _WORLD_WRITABLE if os.path.isdir(d) and not any(
            (p + "/").startswith(d + "/") for p in _interpreter_prefixes())]
    workdir = "/tmp/work" if "/tmp" in tmpfs else os.path.join(host_dir, "work")
    plan = {
        "program_src": os.path.join(host_dir, "program.py"),
        "stage_dir": host_dir,
        "rebind": list(iso.rebind),
        "shadow": list(iso.shadow),
        "tmpfs": tmpfs,
        "tmpfs_bytes": limits.tmpfs_bytes,
        "workdir": workdir,
        "uid": uid,
        "rlimits": rlimits,
        "python": sys.executable,
        "env": _env(workdir),
    }
    with open(os.path.join(host_dir, "boot.py"), "w", encoding="utf-8") as f:
        f.write(_BOOT)
    with open(os.path.join(host_dir, "plan.json"), "w", encoding="utf-8") as f:
        json.dump(plan, f)
    boot = [sys.executable, "-I", "-S", os.path.join(host_dir, "boot.py"),
            os.path.join(host_dir, "plan.json")]
    return [*iso.unshare, *boot]


def _kill_uid(uid: int) -> None:
    """Without a pid namespace, a process may leave our group (setsid); its uid still names it."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-_DETAIL_TAIL_CHARS:]


def _execute(program: str, timeout_s: float, limits: SandboxLimits,
             iso: _Isolation) -> tuple[bool, str, bytes]:
    """One sandboxed run; returns (passed, outcome, stdout)."""
    host_dir = tempfile.mkdtemp(prefix="ps_jax_sandbox_")
    uid = _new_uid() if iso.drop_uid else None
    proc = None
    try:
        with open(os.path.join(host_dir, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        argv = _build_argv(iso, host_dir, timeout_s, limits, uid)
        if not iso.mount_ns:
            os.mkdir(os.path.join(host_dir, "work"))
            if uid is not None:
                os.chmod(host_dir, 0o711)  # the uid may enter host_dir/work, not list host_dir
        deadline = time.monotonic() + timeout_s
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env("/"), cwd=host_dir,
                                start_new_session=True, close_fds=True)
        out, err, reason = _read_capped(proc, deadline, limits.max_output_bytes)
        if reason is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                reason = "timeout"
        if reason is not None:
            proc.stdin.close()  # the bootstrap kills the program and all its descendants
            try:
                proc.wait(timeout=_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid)  # whatever is left in the group, bootstrap included
        rc = proc.wait()
        if reason == "timeout":
            return False, f"timed out after {timeout_s:g}s", out
        if reason == "output":
            return False, f"output limit exceeded ({limits.max_output_bytes} bytes)", out
        if rc == 0:
            return True, "passed", out
        if 128 < rc < 128 + signal.NSIG:
            rc = 128 - rc  # the bootstrap reports the program's signal death as 128 + signal
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = "?"
            msg = f"killed by signal {-rc} ({name})"
            return False, msg + (f": {_tail(err)}" if err.strip() else ""), out
        return False, f"failed (exit code {rc}): {_tail(err)}", out
    except Exception as e:  # sandbox machinery failure, never the program's: report, don't raise
        return False, f"sandbox error: {type(e).__name__}: {e}", b""
    finally:
        if proc is not None:
            if proc.poll() is None:
                _killpg(proc.pid)
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
        if uid is not None and not iso.pid_ns:
            _kill_uid(uid)
        shutil.rmtree(host_dir, ignore_errors=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_capped(proc: subprocess.Popen, deadline: float,
                 cap: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr until EOF, the deadline or `cap` bytes in total (then stop reading)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    total = 0
    with selectors.DefaultSelector() as sel:
        for pipe in bufs:
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), "timeout"
            events = sel.select(timeout=min(left, 0.1))
            if not events and proc.poll() is not None:
                break  # exited; only an escaped descendant could still hold the pipes open
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                buf = bufs[key.fileobj]
                buf += chunk[: max(0, cap - len(buf))]
                if total > cap:
                    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), "output"
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), None


_PROBE_LOCK = threading.Lock()


@functools.cache
def _isolation() -> _Isolation:
    """The strongest isolation that runs a trivial program correctly on this machine."""
    with _PROBE_LOCK:
        errors = []
        for iso in _candidates():
            ok, outcome, out = _execute("print('ok')", 20.0, _DEFAULT_LIMITS, iso)
            if ok and out.strip() == b"ok":
                if "UNSAFE" in iso.describe():
                    warnings.warn("ps_jax.evals sandbox: " + iso.describe() + "; tried: "
                                  + " | ".join(errors), RuntimeWarning, stacklevel=3)
                return iso
            errors.append(f"{iso.describe()}: {outcome}")
        raise RuntimeError("no sandbox configuration can run Python here: " + " | ".join(errors))


def sandbox_isolation() -> str:
    """Human-readable description of the isolation `run_code` uses on this machine."""
    return _isolation().describe()


def run_code(program: str, timeout_s: float,
             limits: SandboxLimits = _DEFAULT_LIMITS) -> tuple[bool, str]:
    """Run `program` with a fresh sandboxed `python -I`; passed iff it exits 0 within timeout_s.

    detail is "passed", "timed out after Xs", "failed (exit code N): <stderr tail>",
    "killed by signal N (NAME)...", "output limit exceeded (N bytes)" or "sandbox error: ...",
    followed by " [isolation: ...]" naming the containment that was in force.
    """
    try:
        iso = _isolation()
    except RuntimeError as e:
        return False, f"sandbox error: {e}"
    passed, outcome, _ = _execute(program, float(timeout_s), limits, iso)
    return passed, f"{outcome} [isolation: {iso.describe()}]"
