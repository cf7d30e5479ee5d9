"""A throwaway local PostgreSQL cluster for the MARBLE database-diagnosis cases.

`LocalPostgres` replaces the release's `docker compose` service (image postgres:15, role `test`,
password `Test123_456`, database `sysbench`, the same server flags) with a cluster made by
`initdb` in a temporary directory and served on 127.0.0.1 at a free port:

    with LocalPostgres() as pg:
      pg.reset()                     # fresh `sysbench` with pg_stat_statements, stats cleared
      with pg.connect() as conn: ... # role `test` over TCP, as the release's agents connect

Why it is built this way:
- initdb refuses to run as root, so as root every server command runs through
  `runuser -u postgres` (or `nobody` when that user is missing) and the temporary directory is
  handed to that user; as a normal user the commands run directly.
- The server is stopped with `pg_ctl stop -m immediate` and its directory removed on every way
  out: `__exit__` (also after an exception or Ctrl-C inside the `with`), `atexit`, SIGTERM and
  SIGHUP (turned into an exception while a cluster is up), and a crash or SIGKILL of the
  parent: a small watchdog process waits on a pipe from the parent and cleans up when the pipe
  closes without the parent saying it is done. The postmaster detaches from the parent, so
  nothing else would stop it.
- `marble_reader` is a second, read-only login role (pg_read_all_data and pg_monitor, no
  write privilege, `default_transaction_read_only`) for the agents' `query_db` tool.
- The admin connection is the bootstrap superuser `test` over the unix socket in the
  temporary directory (trust; the socket directory is private to the server's user).

This module imports only the standard library and psycopg2 (lazily), so a test can load it
by path in a bare interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

USER = "test"  # the release's POSTGRES_USER (a superuser in the postgres:15 image)
PASSWORD = "Test123_456"
DBNAME = "sysbench"
READER = "marble_reader"
READER_PASSWORD = "marble_reader_ro"

# The release's compose command flags (db_env_docker/docker-compose.yml).
SERVER_SETTINGS = {
  "shared_preload_libraries": "'pg_stat_statements'",
  "pg_stat_statements.track": "all",
  "max_connections": "200",
  "log_min_error_statement": "info",
  "logging_collector": "on",
}
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
  """PostgreSQL (server binaries, pg_stat_statements or psycopg2) is not installed here."""


def split_sql(sql: str) -> list[str]:
  """The release's statement split: on `;` followed by a newline, empty pieces dropped."""
  return [s.strip() for s in re.split(r";\s*\n", str(sql or "")) if s.strip()]


def find_bindir() -> str:
  """The directory holding initdb/pg_ctl/postgres: $PS_JAX_PG_BINDIR, `pg_config --bindir`,
  the newest /usr/lib/postgresql/*/bin (Debian keeps them off PATH), or PATH."""
  candidates = []
  if os.environ.get("PS_JAX_PG_BINDIR"):
    candidates.append(os.environ["PS_JAX_PG_BINDIR"])
  if shutil.which("pg_config"):
    with contextlib.suppress(OSError, subprocess.SubprocessError):
      out = subprocess.run(
        ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
      )
      candidates.append(out.stdout.strip())

  def version(path: str) -> tuple[int, ...]:
    m = re.search(r"postgresql/([\d.]+)/", path)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()

  candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
  if shutil.which("pg_ctl"):
    candidates.append(os.path.dirname(os.path.realpath(shutil.which("pg_ctl"))))
  for d in candidates:
    if d and all(os.access(os.path.join(d, b), os.X_OK) for b in _BINARIES):
      return d
  raise PostgresUnavailable(
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: looked in "
    f"{candidates or ['(nothing: no pg_config, no /usr/lib/postgresql/*/bin, no pg_ctl on PATH)']}"
    ". Install them, e.g. `apt-get install -y postgresql` (Debian/Ubuntu), or set "
    "PS_JAX_PG_BINDIR to the directory holding them."
  )


def _psycopg2():
  try:
    import psycopg2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise PostgresUnavailable(
      "psycopg2 is not installed: pip install psycopg2-binary (or ps_jax[agents])"
    ) from e
  return psycopg2


def available() -> str | None:
  """None when a cluster can be started here, else the reason it cannot."""
  try:
    find_bindir()
    _psycopg2()
  except PostgresUnavailable as e:
    return str(e)
  if os.geteuid() == 0 and not shutil.which("runuser"):
    return "running as root needs `runuser` (util-linux) to start PostgreSQL as another user"
  return None


@dataclasses.dataclass(frozen=True)
class ConnInfo:
  """Keyword arguments for psycopg2.connect (host is an address or a socket directory)."""

  host: str
  port: int
  user: str
  password: str
  dbname: str

  def kwargs(self, **extra: Any) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), connect_timeout=5, **extra)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The watchdog, run as `python -c`: argv = [run_as_user or "", pg_ctl, data dir, temp dir].
# It blocks on its stdin (a pipe from the parent); EOF without "done" means the parent died.
_WATCHDOG = r"""
import os, shutil, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
data = b""
while True:
  chunk = os.read(0, 64)
  if not chunk:
    break
  data += chunk
if b"done" not in data:
  user, pg_ctl, datadir, tmp = sys.argv[1:5]
  if os.path.exists(os.path.join(datadir, "postmaster.pid")):
    cmd = [pg_ctl, "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "30"]
    if user:
      cmd = ["runuser", "-u", user, "--"] + cmd
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
  shutil.rmtree(tmp, ignore_errors=True)
"""


_LIVE: list[LocalPostgres] = []
_PREV_HANDLERS: dict[int, Any] = {}


def _on_signal(signum, frame):  # pylint: disable=unused-argument
  # SIGTERM/SIGHUP while a cluster is up: unwind `with` blocks (and so stop the cluster) and
  # exit with the shell's code for a signal death.
  raise SystemExit(128 + signum)


def _install_handlers() -> None:
  if threading.current_thread() is not threading.main_thread() or _PREV_HANDLERS:
    return
  for sig in (signal.SIGTERM, signal.SIGHUP):
    prev = signal.getsignal(sig)
    if prev in (signal.SIG_DFL, None):  # leave an application's own handler alone
      _PREV_HANDLERS[sig] = prev
      signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
  if threading.current_thread() is not threading.main_thread():
    return
  for sig, prev in list(_PREV_HANDLERS.items()):
    signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    del _PREV_HANDLERS[sig]


@atexit.register
def _stop_all() -> None:
  for pg in list(_LIVE):
    if pg._owner_pid == os.getpid():  # a forked child exiting must not stop its parent's cluster
      pg.stop()


class LocalPostgres:
  """A PostgreSQL cluster in a temporary directory; see the module docstring.

  Args:
    bindir: directory of initdb/pg_ctl/postgres (default: `find_bindir()`).
    run_as: OS user that owns and runs the cluster when this process is root (default
      `postgres` if that user exists, else `nobody`); ignored for non-root processes.
    settings: extra or overriding server settings (name -> value as written in
      postgresql.conf), on top of the release's flags.
    start_timeout_s: how long `pg_ctl start` may wait for the server.
  """

  def __init__(
    self,
    bindir: str | None = None,
    *,
    run_as: str | None = None,
    settings: dict[str, str] | None = None,
    start_timeout_s: int = 60,
  ):
    self.bindir = bindir or find_bindir()
    _psycopg2()
    self.root = os.geteuid() == 0
    if self.root:
      if run_as is None:
        run_as = "postgres" if _user_exists("postgres") else "nobody"
      if not shutil.which("runuser"):
        raise PostgresUnavailable("running as root needs `runuser` to start PostgreSQL")
    self.run_as = run_as if self.root else None
    self.settings = {**SERVER_SETTINGS, **(settings or {})}
    self.start_timeout_s = start_timeout_s
    self.tmp: str | None = None
    self.port: int | None = None
    self._watchdog: subprocess.Popen | None = None
    self._cleanups: list[Callable[[], None]] = []
    self._lock = threading.Lock()
    self._stopping = False
    self._owner_pid = os.getpid()

  # Paths ------------------------------------------------------------------------------------
  @property
  def datadir(self) -> str:
    return os.path.join(self.tmp, "data")

  @property
  def sockdir(self) -> str:
    return os.path.join(self.tmp, "sock")

  @property
  def logfile(self) -> str:
    return os.path.join(self.tmp, "server.log")

  @property
  def running(self) -> bool:
    return self.tmp is not None and os.path.exists(os.path.join(self.datadir, "postmaster.pid"))

  def postmaster_pid(self) -> int | None:
    try:
      with open(os.path.join(self.datadir, "postmaster.pid")) as f:
        return int(f.readline())
    except (OSError, ValueError, TypeError):
      return None

  # Connections ------------------------------------------------------------------------------
  def conninfo(self, dbname: str = DBNAME) -> ConnInfo:
    """Role `test` over TCP, as the release's agents and trigger scripts connect."""
    return ConnInfo("127.0.0.1", self.port, USER, PASSWORD, dbname)

  def reader_conninfo(self, dbname: str = DBNAME) -> ConnInfo:
    """The read-only role for the agents' query_db tool."""
    return ConnInfo("127.0.0.1", self.port, READER, READER_PASSWORD, dbname)

  def admin_conninfo(self, dbname: str = "postgres") -> ConnInfo:
    return ConnInfo(self.sockdir, self.port, USER, "", dbname)

  def connect(self, dbname: str = DBNAME, *, autocommit: bool = True, admin: bool = False, **kw):
    """A psycopg2 connection (autocommit by default); close it yourself or use `with
    contextlib.closing(...)`."""
    info = self.admin_conninfo(dbname) if admin else self.conninfo(dbname)
    conn = _psycopg2().connect(**info.kwargs(**kw))
    conn.autocommit = autocommit
    return conn

  def execute(self, sql: str, params=None, *, dbname: str = DBNAME, admin: bool = False):
    """Runs one statement on a fresh autocommit connection; returns its rows or None."""
    with contextlib.closing(self.connect(dbname, admin=admin)) as conn, conn.cursor() as cur:
      cur.execute(sql, params)
      return cur.fetchall() if cur.description is not None else None

  # Lifecycle --------------------------------------------------------------------------------
  def _cmd(self, *args: str) -> list[str]:
    return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

  def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # cwd inside the temp dir: the server's user may not be able to read the caller's cwd.
    return subprocess.run(
      self._cmd(*args), cwd=self.tmp, capture_output=True, text=True, timeout=timeout
    )

  def start(self) -> LocalPostgres:
    if self.tmp is not None:
      raise RuntimeError("this LocalPostgres is already started")
    base = tempfile.gettempdir()
    if len(base) > 60:  # unix socket paths are limited to ~107 bytes
      base = "/tmp"
    self.tmp = tempfile.mkdtemp(prefix="ps_jax_pg_", dir=base)
    self._owner_pid = os.getpid()
    _LIVE.append(self)
    _install_handlers()
    try:
      self._start_watchdog()
      os.mkdir(self.sockdir, 0o700)
      pwfile = os.path.join(self.tmp, "pw")
      with open(pwfile, "w") as f:
        f.write(PASSWORD + "\n")
      if self.run_as:
        uid, gid = pwd.getpwnam(self.run_as)[2:4]
        for p in (self.tmp, self.sockdir, pwfile):
          os.chown(p, uid, gid)
      out = self._run(
        os.path.join(self.bindir, "initdb"),
        "-D",
        self.datadir,
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",  # a throwaway cluster: no need to fsync its files
      )
      os.unlink(pwfile)
      if out.returncode:
        raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
      self._start_server()
      self._bootstrap()
    except BaseException:
      self.stop()
      raise
    return self

  def _start_server(self) -> None:
    conf = os.path.join(self.datadir, "postgresql.conf")
    base = dict(self.settings, listen_addresses="'127.0.0.1'")
    base["unix_socket_directories"] = f"'{self.sockdir}'"
    for attempt in range(5):  # the free port can be taken between probing and binding
      self.port = _free_port()
      lines = [f"{k} = {v}" for k, v in {**base, "port": str(self.port)}.items()]
      with open(conf, "a") as f:
        f.write("\n# ps_jax LocalPostgres\n" + "\n".join(lines) + "\n")
      out = self._run(
        os.path.join(self.bindir, "pg_ctl"),
        "start",
        "-D",
        self.datadir,
        "-l",
        self.logfile,
        "-w",
        "-t",
        str(self.start_timeout_s),
        timeout=self.start_timeout_s + 30,
      )
      if out.returncode == 0:
        return
      log = _read(self.logfile)
      if "could not bind" not in log and "already in use" not in log or attempt == 4:
        raise RuntimeError(
          f"pg_ctl start failed ({out.returncode}): {out.stdout}{out.stderr}\n"
          f"server log:\n{log[-4000:]}"
        )

  def _bootstrap(self) -> None:
    with (
      contextlib.closing(self.connect("postgres", admin=True)) as conn,
      conn.cursor() as cur,
    ):
      cur.execute(
        f"CREATE ROLE {READER} LOGIN PASSWORD %s NOSUPERUSER NOCREATEDB NOCREATEROLE",
        (READER_PASSWORD,),
      )
      cur.execute(f"GRANT pg_read_all_data, pg_monitor TO {READER}")
      # Belt and braces on top of the missing write privileges (a role setting, so a new
      # connection starts read-only whatever its client sends first).
      cur.execute(f"ALTER ROLE {READER} SET default_transaction_read_only = on")
      cur.execute(f"ALTER ROLE {READER} SET temp_file_limit = '1GB'")
      cur.execute(f"CREATE DATABASE {DBNAME} OWNER {USER}")
    self._prepare_db()

  def _prepare_db(self) -> None:
    with contextlib.closing(self.connect(DBNAME, admin=True)) as conn, conn.cursor() as cur:
      try:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
      except Exception as e:
        raise PostgresUnavailable(
          f"pg_stat_statements is not available in this PostgreSQL ({e}); on Debian it ships "
          "with postgresql-NN, elsewhere install postgresql-contrib"
        ) from e
      # The reader may create nothing, not even temp tables.
      cur.execute(f"REVOKE TEMPORARY ON DATABASE {DBNAME} FROM PUBLIC")
      cur.execute("SELECT pg_stat_statements_reset()")

  def add_cleanup(self, fn: Callable[[], None]) -> None:
    """Registers a callable run (once, LIFO) at the next `reset()` or `stop()`: background
    sessions such as the lock holder of LOCK_CONTENTION."""
    with self._lock:
      self._cleanups.append(fn)

  def _run_cleanups(self) -> None:
    with self._lock:
      fns, self._cleanups = self._cleanups[::-1], []
    for fn in fns:
      with contextlib.suppress(Exception):
        fn()

  def reset(self) -> None:
    """A fresh `sysbench`: background sessions stopped, DROP DATABASE ... WITH (FORCE) (which
    also ends every session in it), CREATE DATABASE, pg_stat_statements reset."""
    if not self.running:
      raise RuntimeError("LocalPostgres is not running")
    self._run_cleanups()
    with contextlib.closing(self.connect("postgres", admin=True)) as conn, conn.cursor() as cur:
      cur.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
      cur.execute(f"CREATE DATABASE {DBNAME} OWNER {USER}")
    self._prepare_db()

  def stop(self) -> None:
    """Immediate shutdown and removal of the temporary directory; idempotent, never raises."""
    with self._lock:
      if self.tmp is None or self._stopping:
        return
      self._stopping = True
    tmp = self.tmp
    try:
      self._run_cleanups()
      pid = self.postmaster_pid()
      if pid is not None:
        with contextlib.suppress(Exception):
          self._run(
            os.path.join(self.bindir, "pg_ctl"),
            "stop",
            "-D",
            self.datadir,
            "-m",
            "immediate",
            "-w",
            "-t",
            "30",
            timeout=60,
          )
        _kill_if_alive(pid)
      shutil.rmtree(tmp, ignore_errors=True)
      if self._watchdog is not None:
        with contextlib.suppress(Exception):
          self._watchdog.stdin.write(b"done")
          self._watchdog.stdin.close()
          self._watchdog.wait(timeout=10)
    finally:
      self.tmp, self._stopping = None, False
      if self in _LIVE:
        _LIVE.remove(self)
      if not _LIVE:
        _restore_handlers()

  def _start_watchdog(self) -> None:
    argv = [self.run_as or "", os.path.join(self.bindir, "pg_ctl"), self.datadir, self.tmp]
    self._watchdog = subprocess.Popen(
      [sys.executable, "-I", "-S", "-c", _WATCHDOG, *argv],
      stdin=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      cwd="/",
      start_new_session=True,  # a terminal's Ctrl-C must not kill it before it cleans up
    )

  def __enter__(self) -> LocalPostgres:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def __repr__(self) -> str:
    state = f"port={self.port} dir={self.tmp}" if self.running else "stopped"
    return f"LocalPostgres({state})"


def _user_exists(name: str) -> bool:
  try:
    pwd.getpwnam(name)
    return True
  except KeyError:
    return False


def _read(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except OSError:
    return ""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:  # an exited postmaster stays a zombie until its new parent (often PID 1) reaps it
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _kill_if_alive(pid: int, timeout_s: float = 10.0) -> None:
  """Last resort when pg_ctl could not stop the postmaster: SIGQUIT (immediate), then
  SIGKILL (its children notice the postmaster's death and exit)."""
  deadline = time.monotonic() + timeout_s
  for sig in (signal.SIGQUIT, signal.SIGKILL):
    if not _alive(pid):
      return
    with contextlib.suppress(ProcessLookupError, PermissionError):
      os.kill(pid, sig)
    while _alive(pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    deadline = time.monotonic() + timeout_s


@contextlib.contextmanager
def local_postgres(**kw) -> Iterator[LocalPostgres]:
  """`with local_postgres() as pg:`, the same as `with LocalPostgres() as pg:`."""
  with LocalPostgres(**kw) as pg:
    yield pg
