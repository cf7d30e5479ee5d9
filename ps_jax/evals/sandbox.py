"""Run untrusted generated code (solution + tests) in a contained child Python, or refuse.

`run_code(program, timeout_s, limits)` never raises for a bad program; it returns
(passed, detail). `passed` means the program ran to its last statement: a program that exits
early with status 0 (`sys.exit()`, `raise SystemExit(0)`, `os._exit(0)`, ...) fails.

Containment, all of it or the run is refused (fail closed):

* Namespaces (util-linux `unshare`): pid (the program sees only its own processes; killing
  the namespace's init kills them all), net (a downed loopback only), mount, ipc, uts. As root
  they are made directly; otherwise inside a new user namespace.
* A minimal root filesystem, built on a tmpfs and entered with pivot_root: the system's
  /usr, /bin, /lib* and the interpreter's prefix read-only (nosuid), a /proc of the new pid
  namespace, a /dev with null/zero/full/random/urandom, and private size-capped tmpfs at /tmp
  (the working directory), /var/tmp, /dev/shm and /run/lock. Nothing of the host is writable;
  home directories, /etc, the repository and other processes' /proc entries are not there.
* Privileges. As root, the program runs under a fresh uid, so it owns nothing of the host and
  RLIMIT_NPROC (not enforced for root) counts only this run's processes. Otherwise it runs as
  uid 0 of the user namespace with every capability dropped (securebits NOROOT locked, empty
  bounding set) and no_new_privs.
* rlimits (CPU, address space, processes, file size, open files, no core), a wall-clock
  timeout that kills every process of the run, stdout+stderr capped, and an environment that
  holds none of the parent's variables.

Completion: a wrapper reads a random token from a pipe before it runs the program and writes
it to a second pipe after the program's last statement; the bootstrap (a separate, more
privileged process) checks it. The token is in no file, argument or environment variable, so
reading its own source, argv or environment does not let a program forge success (a program
that deliberately searches the wrapper's memory could; this guards against early exits, not
against an adversary inspecting the interpreter).

When containment cannot be built (no `unshare`, namespaces forbidden, ...), `run_code`
returns passed=False with a detail naming what failed, unless the caller opted in with
`SandboxLimits(allow_unsafe=True)` or `PS_JAX_ALLOW_UNSAFE_SANDBOX=1`: then programs run with
rlimits only, as the calling user, and every detail says UNSAFE.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
  "ProgramRun",
  "run_code",
  "run_program",
  "sandbox_isolation",
  "SandboxLimits",
  "UNSAFE_ENV",
]

UNSAFE_ENV = "PS_JAX_ALLOW_UNSAFE_SANDBOX"


@dataclass(frozen=True)
class SandboxLimits:
  """Resource limits of one run (sizes in bytes) and the opt-in to run without containment."""

  memory_bytes: int = 1 << 30  # RLIMIT_AS
  max_processes: int = 64  # RLIMIT_NPROC (tasks, threads included)
  max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE, per file
  max_open_files: int = 256  # RLIMIT_NOFILE
  max_output_bytes: int = 64 << 10  # stdout + stderr read before the run is killed
  tmpfs_bytes: int = 64 << 20  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run/lock)
  allow_unsafe: bool = False  # run with rlimits only when containment is unavailable


_DEFAULT_LIMITS = SandboxLimits()
_DETAIL_TAIL_CHARS = 2000
# For the bootstrap to kill the program's processes (its exit as init of the pid namespace
# returns once all are reaped) before we SIGKILL its group.
_GRACE_S = 10.0
_PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache",)  # the dynamic linker's index, nothing private
_DEVICES = ("null", "zero", "full", "random", "urandom")
_WORKDIR = "/tmp/work"
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# Fresh uids come from a range no distribution allocates, so a run's processes are only its own.
_UID_BASE, _UID_SPAN = 1_500_000_000, 100_000_000
_NS_FLAGS = (
  "--mount",
  "--propagation",
  "private",
  "--net",
  "--pid",
  "--ipc",
  "--uts",
  "--fork",
  "--kill-child",
)

# The program's process: `python -I -c _WRAPPER`, cwd /tmp/work, fd 3 = token in, fd 4 = out.
_WRAPPER = r"""
import os, sys
def _run(token):
  os.set_inheritable(4, False)
  sys.argv = ["program.py"]
  with open("program.py", "rb") as f:
    source = f.read()
  code = compile(source, "program.py", "exec")
  exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
  os.write(4, token)
_token = os.read(3, 64)
os.close(3)
_run(_token)
del _token
"""

# Runs first (python -I -S boot.py plan.json), inside the namespaces: builds the root, starts
# the program, checks its completion token, kills what it leaves, reports on `status_fd`.
_BOOT = r"""
import ctypes, fcntl, json, os, resource, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as init of the pid namespace: then unkillable
with open(sys.argv[1]) as f:
  plan = json.load(f)
with open(plan["program_src"], "rb") as f:
  program = f.read()
# Above the program's fds 3 and 4, and closed on its exec: the child can still report a failure.
status_fd = fcntl.fcntl(plan["status_fd"], fcntl.F_DUPFD_CLOEXEC, 100)
os.close(plan["status_fd"])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 21
# statvfs flag -> mount flag; a remount in a user namespace must keep the locked ones.
KEEP = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME))

def report(**kw):
  os.write(status_fd, json.dumps(kw).encode())

def fail(what):
  report(error=what)
  os._exit(125)

def call(ret, what):
  if ret != 0:
    fail("%s: %s" % (what, os.strerror(ctypes.get_errno())))

def mount(src, dst, fstype, flags, data=None):
  enc = lambda s: None if s is None else s.encode()
  call(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), "mount " + dst)

def bind_ro(src, dst, extra):
  if os.path.isdir(src):
    os.makedirs(dst, exist_ok=True)
  else:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    open(dst, "w").close()
  mount(src, dst, None, MS_BIND | MS_REC)
  kept = sum(m for s, m in KEEP if os.statvfs(dst).f_flag & s)
  mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra | kept)

def tmpfs(dst, mode, size):
  os.makedirs(dst, exist_ok=True)
  mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, "mode=%o,size=%d" % (mode, size))

def build_root(new):
  tmpfs(new, 0o755, 1 << 20)
  for path, target in plan["symlinks"]:
    os.symlink(target, new + path)
  for path in plan["ro_binds"]:
    bind_ro(path, new + path, MS_NOSUID | MS_NODEV)
  os.makedirs(new + "/proc")
  mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  tmpfs(new + "/dev", 0o755, 1 << 16)
  for name in plan["devices"]:
    bind_ro("/dev/" + name, new + "/dev/" + name, MS_NOSUID | MS_NOEXEC)
  for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, new + "/dev/" + name)
  for path in plan["tmpfs"]:
    tmpfs(new + path, 0o1777, plan["tmpfs_bytes"])
  os.makedirs(new + plan["workdir"], mode=0o700)
  with open(new + plan["workdir"] + "/program.py", "wb") as f:
    f.write(program)
  if plan["uid"] is not None:
    os.chown(new + plan["workdir"], plan["uid"], plan["uid"])
    os.chown(new + plan["workdir"] + "/program.py", plan["uid"], plan["uid"])
  mount(None, new, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
  # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves no way back.
  os.chdir(new)
  call(libc.syscall(plan["sys_pivot_root"], b".", b"."), "pivot_root")
  call(libc.umount2(b".", 2), "detach the old root")  # MNT_DETACH
  os.chdir("/")

def no_nested_user_namespaces():
  # A nested user namespace would let the program mount tmpfs of its own (host memory).
  with open("/proc/sys/user/max_user_namespaces", "w") as f:
    f.write("0")

def enter_own_user_namespace():
  # As root: a user namespace of the program's own, where only the fresh uid is mapped (we,
  # in the parent namespace, write the map).
  call(libc.unshare(0x10000000), "unshare the user namespace")  # CLONE_NEWUSER
  os.write(to_parent_w, b"u")
  if os.read(to_child_r, 1) != b"m":
    fail("the uid map of the program's user namespace was not written")
  no_nested_user_namespaces()

def drop_privileges():
  PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
  uid = plan["uid"]
  for cap in range(plan["cap_last_cap"] + 1):
    libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
  call(libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0), "clear ambient capabilities")
  if uid is not None:  # leaving root of the namespace clears every capability
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  elif plan["userns"]:  # uid 0 of the user namespace: never regain capabilities on exec
    call(libc.prctl(PR_SET_SECUREBITS, 1 | 2 | 8 | 32 | 64 | 128, 0, 0, 0), "securebits")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    call(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
  call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

if plan["root"]:
  build_root(plan["root"])
else:  # unsafe: a working directory on the host, same user
  os.makedirs(plan["workdir"], mode=0o700)
  with open(plan["workdir"] + "/program.py", "wb") as f:
    f.write(program)
if plan["userns"]:
  no_nested_user_namespaces()
token = os.urandom(16).hex().encode()
token_r, token_w = os.pipe()
to_parent_r, to_parent_w = os.pipe()  # the uid map handshake (as root)
to_child_r, to_child_w = os.pipe()
result_r, result_w = os.pipe()
PR_SET_CHILD_SUBREAPER = 36
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
child = os.fork()
if child == 0:
  try:
    if plan["uid"] is not None:
      enter_own_user_namespace()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    high_r = fcntl.fcntl(token_r, fcntl.F_DUPFD, 10)  # above 3 and 4, so dup2 clobbers neither
    high_w = fcntl.fcntl(result_w, fcntl.F_DUPFD, 10)
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)
    os.closerange(5, status_fd)
    os.closerange(status_fd + 1, 1 << 16)
    os.chdir(plan["workdir"])
    for name, soft, hard in plan["rlimits"]:
      resource.setrlimit(getattr(resource, name), (soft, hard))
    drop_privileges()
    os.execve(plan["python"], [plan["python"], "-I", "-c", plan["wrapper"]], plan["env"])
  finally:
    os._exit(127)
os.close(token_r)
os.close(result_w)
if plan["uid"] is not None and os.read(to_parent_r, 1) == b"u":
  for name in ("uid_map", "gid_map"):
    with open("/proc/%d/%s" % (child, name), "w") as f:
      f.write("%d %d 1" % (plan["uid"], plan["uid"]))
  os.write(to_child_w, b"m")
for fd in (to_parent_r, to_parent_w, to_child_r, to_child_w):
  os.close(fd)
os.write(token_w, token)
os.close(token_w)
os.set_blocking(result_r, False)

def watch_harness():  # our stdin is a pipe the harness never writes: EOF = stop the program
  while os.read(0, 1):
    pass
  os.kill(child, 9)

threading.Thread(target=watch_harness, daemon=True).start()
_, status = os.waitpid(child, 0)
try:
  completed = os.read(result_r, 64) == token
except BlockingIOError:
  completed = False

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

# Kill whatever the program left behind, also processes that left its group (setsid). As
# init of a pid namespace our exit does it; otherwise, as the subreaper that inherits them.
if os.getpid() != 1:
  for _ in range(100):  # killing a child re-parents its own children to us: repeat
    kids = children()
    if not kids:
      break
    for pid in kids:
      os.kill(pid, 9)
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      pass
code = os.waitstatus_to_exitcode(status)
report(exit_code=code, completed=completed)
os._exit(0)
"""


@dataclass(frozen=True)
class _Isolation:
  """How runs are made: `contained_root` (namespaces + fresh uid), `contained_userns`
  (user namespace, capabilities dropped), `unsafe` (opted in; rlimits only) or `refused`."""

  mode: str
  reason: str = ""  # why containment is unavailable (unsafe / refused)

  def describe(self) -> str:
    common = (
      "namespaces pid,net,mount,ipc,uts; minimal read-only root with private tmpfs "
      "/tmp,/var/tmp,/dev/shm,/run/lock; empty environment; rlimits"
    )
    if self.mode == "contained_root":
      return f"contained: {common}; fresh uid"
    if self.mode == "contained_userns":
      return f"contained: user namespace, {common}; all capabilities dropped"
    if self.mode == "unsafe":
      return (
        f"UNSAFE (opted in with allow_unsafe / {UNSAFE_ENV}=1): rlimits only, no network, "
        f"filesystem or environment containment; containment failed: {self.reason}"
      )
    return (
      f"refused: containment unavailable ({self.reason}); to run generated code without "
      f"it, opt in with SandboxLimits(allow_unsafe=True) or {UNSAFE_ENV}=1"
    )


def _new_uid() -> int:
  return _UID_BASE + random.randrange(_UID_SPAN)


def _env(workdir: str) -> dict[str, str]:
  # Nothing from the parent leaks in. (-I already ignores PYTHON* variables, so no hash seed.)
  # One BLAS/OpenMP thread: threads count against RLIMIT_NPROC, and per-thread buffers
  # against RLIMIT_AS (numpy's OpenBLAS would reserve them for every core).
  return {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": workdir,
    "TMPDIR": "/tmp",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
  }


def _interpreter() -> str:
  """The base interpreter (not a venv's), so only its prefix needs to be in the new root."""
  return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _root_layout() -> tuple[list[list[str]], list[str]]:
  """(symlinks [path, target], read-only binds) of the program's root filesystem."""
  symlinks, binds = [], []
  for d in _SYSTEM_DIRS:
    if os.path.islink(d):
      symlinks.append([d, os.readlink(d)])
    elif os.path.isdir(d):
      binds.append(d)
  binds += [f for f in _SYSTEM_FILES if os.path.isfile(f)]
  prefix = os.path.realpath(sys.base_prefix)
  if not any(prefix == b or prefix.startswith(b + "/") for b in binds):
    binds.append(prefix)
  return symlinks, binds


def _build_argv(
  iso: _Isolation,
  host_dir: str,
  timeout_s: float,
  limits: SandboxLimits,
  uid: int | None,
  status_fd: int,
) -> list[str]:
  """Write the bootstrap and its plan into host_dir; return the command line."""
  cpu = max(1, math.ceil(timeout_s)) + 1  # a backstop: the wall-clock timeout comes first
  rlimits = [
    ("RLIMIT_CPU", cpu, cpu + 1),  # soft: SIGXCPU, hard: SIGKILL
    ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
    ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
    ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
    ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
    ("RLIMIT_CORE", 0, 0),
  ]
  contained = iso.mode.startswith("contained")
  if not contained:
    rlimits = [r for r in rlimits if r[0] != "RLIMIT_NPROC"]  # would count all our processes
  symlinks, binds = _root_layout()
  workdir = _WORKDIR if contained else os.path.join(host_dir, "work")
  with open(os.path.join("/proc/sys/kernel/cap_last_cap")) as f:
    cap_last_cap = int(f.read())
  plan = {
    "program_src": os.path.join(host_dir, "program.py"),
    "status_fd": status_fd,
    "root": os.path.join(host_dir, "root") if contained else None,
    "userns": iso.mode == "contained_userns",
    "symlinks": symlinks,
    "ro_binds": binds,
    "devices": [d for d in _DEVICES if os.path.exists(f"/dev/{d}")],
    "tmpfs": list(_PRIVATE_TMPFS),
    "tmpfs_bytes": limits.tmpfs_bytes,
    "workdir": workdir,
    "uid": uid,
    "rlimits": rlimits,
    "cap_last_cap": cap_last_cap,
    "sys_pivot_root": _SYS_PIVOT_ROOT.get(platform.machine(), -1),
    "python": _interpreter(),
    "wrapper": _WRAPPER,
    "env": _env(workdir),
  }
  if contained:
    os.mkdir(plan["root"])
  with open(os.path.join(host_dir, "boot.py"), "w", encoding="utf-8") as f:
    f.write(_BOOT)
  with open(os.path.join(host_dir, "plan.json"), "w", encoding="utf-8") as f:
    json.dump(plan, f)
  boot = [
    sys.executable,
    "-I",
    "-S",
    os.path.join(host_dir, "boot.py"),
    os.path.join(host_dir, "plan.json"),
  ]
  if iso.mode == "contained_root":
    return [shutil.which("unshare") or "unshare", *_NS_FLAGS, *boot]
  if iso.mode == "contained_userns":
    return [shutil.which("unshare") or "unshare", "--user", "--map-root-user", *_NS_FLAGS, *boot]
  return boot


def _tail(data: bytes) -> str:
  text = data.decode("utf-8", errors="replace").strip()
  return text[-_DETAIL_TAIL_CHARS:]


def _read_all(fd: int) -> bytes:
  os.set_blocking(fd, False)
  chunks = []
  try:
    while chunk := os.read(fd, 65536):
      chunks.append(chunk)
  except BlockingIOError:
    pass
  return b"".join(chunks)


def _execute(
  program: str, timeout_s: float, limits: SandboxLimits, iso: _Isolation
) -> tuple[bool, str, bytes]:
  """One run; returns (passed, outcome, stdout)."""
  host_dir = tempfile.mkdtemp(prefix="ps_jax_sandbox_")
  uid = _new_uid() if iso.mode == "contained_root" else None
  status_r, status_w = os.pipe()
  proc = None
  try:
    with open(os.path.join(host_dir, "program.py"), "w", encoding="utf-8") as f:
      f.write(program)
    argv = _build_argv(iso, host_dir, timeout_s, limits, uid, status_w)
    deadline = time.monotonic() + timeout_s
    proc = subprocess.Popen(
      argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=_env("/"),
      cwd=host_dir,
      start_new_session=True,
      close_fds=True,
      pass_fds=(status_w,),
    )
    os.close(status_w)
    status_w = None
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
    proc.wait()
    if reason == "timeout":
      return False, f"timed out after {timeout_s:g}s", out
    if reason == "output":
      return False, f"output limit exceeded ({limits.max_output_bytes} bytes)", out
    raw = _read_all(status_r).decode("utf-8", errors="replace")
    try:
      status, _ = json.JSONDecoder().raw_decode(raw)  # the first report counts
    except ValueError:
      return False, f"sandbox error: the bootstrap reported nothing: {_tail(err)}", out
    if "error" in status:
      return False, f"sandbox error: {status['error']}", out
    return (*_outcome(status["exit_code"], status["completed"], err), out)
  except Exception as e:  # sandbox machinery failure, never the program's: report, don't raise
    return False, f"sandbox error: {type(e).__name__}: {e}", b""
  finally:
    if status_w is not None:
      os.close(status_w)
    os.close(status_r)
    if proc is not None:
      if proc.poll() is None:
        _killpg(proc.pid)
        proc.wait()
      for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()
    shutil.rmtree(host_dir, ignore_errors=True)


def _outcome(code: int, completed: bool, err: bytes) -> tuple[bool, str]:
  if code == 0 and completed:
    return True, "passed"
  if code == 0:
    return False, "exited with status 0 before the program completed (tests did not all run)"
  if code < 0:
    try:
      name = signal.Signals(-code).name
    except ValueError:
      name = "?"
    return False, f"killed by signal {-code} ({name})" + (f": {_tail(err)}" if err.strip() else "")
  return False, f"failed (exit code {code}): {_tail(err)}"


def _killpg(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read_capped(
  proc: subprocess.Popen, deadline: float, cap: int
) -> tuple[bytes, bytes, str | None]:
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


# The probe checks the containment it relies on, not only that Python starts.
_PROBE = """
import os, socket
assert [n for _, n in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
for path in ("/", "/usr"):
  try:
    open(os.path.join(path, "ps_jax_probe"), "w")
  except OSError:
    continue
  raise SystemExit(path + " is writable")
assert not os.path.exists("/etc/passwd") and os.getpid() < 10
print("ok")
"""
_PROBE_LOCK = threading.Lock()


@functools.cache
def _probe(mode: str) -> str | None:
  """None when `mode` contains a program on this machine, else what went wrong."""
  if not shutil.which("unshare"):
    return "util-linux `unshare` is not installed"
  if platform.machine() not in _SYS_PIVOT_ROOT:
    return f"pivot_root syscall number unknown for {platform.machine()}"
  with _PROBE_LOCK:
    ok, outcome, out = _execute(_PROBE, 30.0, _DEFAULT_LIMITS, _Isolation(mode))
  if ok and out.strip() == b"ok":
    return None
  return f"{mode} probe: {outcome}"


def _contained_mode() -> str:
  return "contained_root" if os.geteuid() == 0 else "contained_userns"


def _isolation(limits: SandboxLimits = _DEFAULT_LIMITS) -> _Isolation:
  """The contained mode for this user, else unsafe if opted in, else refused."""
  mode = _contained_mode()
  error = _probe(mode)
  if error is None:
    return _Isolation(mode)
  if limits.allow_unsafe or os.environ.get(UNSAFE_ENV) == "1":
    return _Isolation("unsafe", error)
  return _Isolation("refused", error)


def sandbox_isolation(limits: SandboxLimits = _DEFAULT_LIMITS) -> str:
  """What `run_code` does on this machine: "contained: ...", "UNSAFE ..." or "refused: ..."."""
  return _isolation(limits).describe()


class ProgramRun(NamedTuple):
  passed: bool  # ran to completion within the timeout
  detail: str  # as `run_code` describes it, with the isolation in force
  stdout: bytes  # the program's standard output (capped)


def run_program(
  program: str, timeout_s: float, limits: SandboxLimits = _DEFAULT_LIMITS
) -> ProgramRun:
  """Run `program` in a contained `python -I` (see `run_code`), keeping its stdout."""
  iso = _isolation(limits)
  if iso.mode == "refused":
    return ProgramRun(False, f"refused [isolation: {iso.describe()}]", b"")
  try:
    program.encode("utf-8")
  except UnicodeEncodeError as e:  # e.g. a lone surrogate in decoded model output
    detail = f"failed (the program is not valid UTF-8: {e}) [isolation: {iso.describe()}]"
    return ProgramRun(False, detail, b"")
  passed, outcome, out = _execute(program, float(timeout_s), limits, iso)
  return ProgramRun(passed, f"{outcome} [isolation: {iso.describe()}]", out)


def run_code(
  program: str, timeout_s: float, limits: SandboxLimits = _DEFAULT_LIMITS
) -> tuple[bool, str]:
  """Run `program` in a contained `python -I`; passed iff it ran to completion in timeout_s.

  detail is "passed", "timed out after Xs", "failed (exit code N): <stderr tail>",
  "exited with status 0 before the program completed ...", "killed by signal N (NAME)...",
  "output limit exceeded (N bytes)", "sandbox error: ..." or "refused: ...", followed by
  " [isolation: ...]" naming the containment in force.
  """
  run = run_program(program, timeout_s, limits)
  return run.passed, run.detail
