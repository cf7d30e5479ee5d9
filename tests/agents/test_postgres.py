"""LocalPostgres, the five MARBLE triggers and the read-only query_db against a real server.

Without PostgreSQL these tests skip, unless PS_JAX_REQUIRE_POSTGRES is set (as .ci/run does):
then they fail. Clusters that must die in odd ways run in child interpreters that load
postgres.py by path (it needs only the standard library and psycopg2).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ps_jax.agents import postgres
from ps_jax.agents.marble import triggers
from ps_jax.agents.postgres import LocalPostgres, PostgresUnavailable, split_sql
from ps_jax.agents.tools.query_db import ERROR_PREFIX, QueryDB, query_db_tool
from ps_jax.agents.tools.registry import ToolRegistry

REQUIRED = os.environ.get("PS_JAX_REQUIRE_POSTGRES", "") not in ("", "0")
PARAMS = triggers.TriggerParams()  # the values of every MARBLE case (clamped inside)


def require_postgres() -> None:
  reason = postgres.available()
  if reason is None:
    return
  if REQUIRED:
    pytest.fail(f"PS_JAX_REQUIRE_POSTGRES is set but PostgreSQL is unavailable: {reason}")
  pytest.skip(f"PostgreSQL unavailable: {reason}")


def procs_mentioning(text: str) -> list[str]:
  """Live processes whose command line contains `text` (pgrep -f, or /proc without it)."""
  if shutil.which("pgrep"):
    out = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    with contextlib.suppress(OSError):
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
      if text in cmd:
        found.append(f"{pid} {cmd}")
  return found


def _stat(pid: int) -> list[str] | None:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None


def alive(pid: int) -> bool:
  st = _stat(pid)
  return st is not None and st[0] != "Z"


def children(pid: int) -> list[int]:
  return [
    int(p)
    for p in filter(str.isdigit, os.listdir("/proc"))
    if (_stat(int(p)) or [0, 0])[1] == str(pid)
  ]


def wait_for(fn, timeout_s: float = 15.0):
  deadline = time.monotonic() + timeout_s
  value = fn()
  while not value and time.monotonic() < deadline:
    time.sleep(0.05)
    value = fn()
  return value


def cluster_pids(pg: LocalPostgres) -> list[int]:
  pid = pg.postmaster_pid()
  return [pid, *children(pid)]


def assert_gone(tmp: str, pids: list[int], timeout_s: float = 30.0) -> None:
  """No process of the cluster and no temporary directory left."""
  ok = wait_for(lambda: not any(map(alive, pids)) and not os.path.exists(tmp), timeout_s)
  assert ok, f"left behind: dir={os.path.exists(tmp)}, pids={[p for p in pids if alive(p)]}"
  assert procs_mentioning(tmp) == []


@pytest.fixture(scope="module")
def pg():
  require_postgres()
  with LocalPostgres() as cluster:
    yield cluster


@pytest.fixture
def fresh(pg):
  pg.reset()
  return pg


def reader(pg, **kw) -> QueryDB:
  return QueryDB(pg.reader_conninfo(), **kw)


# Discovery and helpers (no server needed) ------------------------------------------------------


def test_missing_binaries_named(monkeypatch, tmp_path):
  monkeypatch.setenv("PS_JAX_PG_BINDIR", str(tmp_path))
  monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
  monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
  with pytest.raises(PostgresUnavailable, match=r"initdb, pg_ctl, postgres.*apt-get install"):
    postgres.find_bindir()
  assert "initdb" in postgres.available()


def test_split_sql_as_release():
  sql = "CREATE TABLE a (x int);\nINSERT INTO a VALUES (1);  \n\nSELECT ';' ; SELECT 2;\n"
  assert split_sql(sql) == [
    "CREATE TABLE a (x int)",
    "INSERT INTO a VALUES (1)",
    "SELECT ';' ; SELECT 2",
  ]


# The cluster -----------------------------------------------------------------------------------


def test_cluster_settings_roles_and_owner(pg):
  settings = dict(
    pg.execute(
      "SELECT name, setting FROM pg_settings WHERE name IN ('shared_preload_libraries', "
      "'pg_stat_statements.track', 'max_connections', 'listen_addresses', "
      "'logging_collector', 'log_min_error_statement')"
    )
  )
  assert settings == {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "max_connections": "200",
    "listen_addresses": "127.0.0.1",
    "logging_collector": "on",
    "log_min_error_statement": "info",
  }
  assert pg.execute(
    "SELECT current_user, current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
  ) == [("test", "sysbench", True)]
  assert pg.execute("SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'")
  # As root the server runs as another user and owns its directory.
  with open(f"/proc/{pg.postmaster_pid()}/status") as f:
    uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
  assert uid == os.stat(pg.datadir).st_uid
  if os.geteuid() == 0:
    assert uid != 0


def test_reset_gives_a_fresh_database(pg):
  pg.reset()
  pg.execute("CREATE TABLE leftover (x int)")
  pg.execute("SELECT count(*) FROM leftover")
  pg.reset()
  assert pg.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'") == [(0,)]
  assert pg.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%leftover%'") == [
    (0,)
  ]


# Triggers: the evidence of agentic.md §3.4 / §4.2 ------------------------------------------------


def test_insert_large_data_evidence(fresh):
  triggers.run_trigger(fresh, "INSERT_LARGE_DATA", PARAMS)
  out = reader(fresh).query(
    "SELECT calls, rows, total_exec_time FROM pg_stat_statements "
    "WHERE query LIKE 'INSERT INTO marble_insert_large_data%'"
  )
  # The read-only role sees statistics of the superuser's statements (pg_read_all_stats).
  assert out.startswith("Your query on the database was successful. \n"), out
  ((calls, rows, total_ms),) = fresh.execute(
    "SELECT calls, rows, total_exec_time FROM pg_stat_statements "
    "WHERE query LIKE 'INSERT INTO marble_insert_large_data%'"
  )
  assert (calls, rows) == (12, 48_000)
  assert total_ms > 0
  assert fresh.execute("SELECT count(*) FROM marble_insert_large_data") == [(48_000,)]
  widths = fresh.execute(
    "SELECT count(*), max(character_maximum_length) FROM information_schema.columns "
    "WHERE table_name = 'marble_insert_large_data' AND column_name ~ '^c[0-9]+$'"
  )
  assert widths == [(20, 100)]


def test_redundant_index_evidence(fresh):
  triggers.run_trigger(fresh, "REDUNDANT_INDEX", PARAMS)

  def scans():
    return dict(
      fresh.execute(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
        "WHERE relname = 'marble_redundant_index'"
      )
    )

  # Index statistics reach the shared stats when the probe's session ends.
  got = wait_for(lambda: (s := scans()).get("marble_redundant_index_pkey") and s)
  assert got == {
    "marble_redundant_index_pkey": 1,
    "idx_marble_redundant_index_c1_a": 0,
    "idx_marble_redundant_index_c1_b": 0,
    "idx_marble_redundant_index_c1_c2_a": 0,
    "idx_marble_redundant_index_c1_c2_b": 0,
  }
  defs = fresh.execute(
    "SELECT regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes "
    "WHERE tablename = 'marble_redundant_index' AND indexname LIKE 'idx_%'"
  )
  assert len({d for (d,) in defs}) == 2  # two pairs of identical definitions


def test_lock_contention_held_until_reset(fresh):
  triggers.run_trigger(fresh, "LOCK_CONTENTION", PARAMS)
  time.sleep(1.0)  # still there later: the default holds until reset, not 60 s
  waiting = fresh.execute(
    "SELECT locktype, mode, count(*) FROM pg_locks WHERE NOT granted GROUP BY 1, 2 ORDER BY 1"
  )
  assert waiting == [("transactionid", "ShareLock", 1), ("tuple", "ExclusiveLock", 3)]
  apps = fresh.execute(
    "SELECT application_name, wait_event_type, count(*) FROM pg_stat_activity "
    "WHERE application_name LIKE 'marble_lock%' GROUP BY 1, 2 ORDER BY 1"
  )
  assert apps == [("marble_lock_holder", "Client", 1), ("marble_lock_waiter", "Lock", 4)]
  out = reader(fresh).query("SELECT count(*) FROM pg_locks WHERE NOT granted")
  assert out.endswith("Result: [(4,)]")
  fresh.reset()  # ends holder and waiters
  assert fresh.execute(
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'marble_lock%'"
  ) == [(0,)]
  assert fresh.execute("SELECT count(*) FROM pg_locks WHERE NOT granted") == [(0,)]


def test_lock_contention_release_timing(fresh):
  # The release's behaviour with a short hold: the holder commits, the waiters then finish and
  # only their long UPDATEs remain (1 holder + 4 waiters).
  triggers.run_trigger(fresh, "LOCK_CONTENTION", PARAMS, lock_hold_s=1.0)

  def done():
    rows = fresh.execute(
      "SELECT calls, max_exec_time FROM pg_stat_statements "
      "WHERE query LIKE 'UPDATE marble_lock_contention%'"
    )
    return rows if rows and rows[0][0] == 5 else None

  ((calls, max_ms),) = wait_for(done, 20)
  assert calls == 5 and max_ms > 500
  assert wait_for(
    lambda: fresh.execute("SELECT count(*) FROM pg_locks WHERE NOT granted") == [(0,)]
  )


def test_vacuum_evidence(fresh):
  triggers.run_trigger(fresh, "VACUUM", PARAMS)
  assert fresh.execute(
    "SELECT query, calls FROM pg_stat_statements WHERE query LIKE 'VACUUM%'"
  ) == [("VACUUM FULL marble_vacuum", 1)]
  dead = wait_for(
    lambda: fresh.execute(
      "SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relname = 'marble_vacuum' "
      "AND n_dead_tup > 0"
    )
  )
  assert dead == [(4499, 501)]
  assert fresh.execute("SELECT reloptions FROM pg_class WHERE relname = 'marble_vacuum'") == [
    (["autovacuum_enabled=false"],)
  ]


def test_fetch_large_data_evidence(fresh):
  triggers.run_trigger(fresh, "FETCH_LARGE_DATA", PARAMS)
  assert fresh.execute(
    "SELECT query, calls, rows FROM pg_stat_statements "
    "WHERE query LIKE 'SELECT * FROM marble_fetch%'"
  ) == [("SELECT * FROM marble_fetch_orders ORDER BY id LIMIT $1", 24, 2400)]
  assert fresh.execute("SELECT count(*), min(length(payload)) FROM marble_fetch_orders") == [
    (20_000, 256)
  ]


def test_trigger_params_clamped():
  p = triggers.TriggerParams.from_anomaly(
    {"anomaly": "X", "threads": 100, "ncolumn": 50, "nrow": 20000, "colsize": 1000}
  )
  assert (p.workers, p.columns, p.width) == (8, 20, 200)
  assert triggers.TriggerParams(threads=0, ncolumn=0, colsize=1).width == 8
  with pytest.raises(ValueError, match="ncolumn"):
    triggers.TriggerParams.from_anomaly({"anomaly": "X", "ncolumn": "many"})
  with pytest.raises(ValueError, match="unknown anomaly 'CPU_CONTENTION'"):
    triggers.run_trigger(None, "CPU_CONTENTION")


# query_db --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(pg):
  pg.reset()
  pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
  pg.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g")
  return pg


@pytest.mark.parametrize(
  "sql",
  [
    "DROP TABLE t",
    "INSERT INTO t VALUES (9, 'x')",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "COPY (SELECT 1) TO PROGRAM 'true'",
    "VACUUM t",
    "CREATE TABLE u (x int)",
    "CREATE TEMP TABLE u (x int)",
    # Undoing the read-only setting still leaves a role without write privileges.
    "SET transaction_read_only = off;\nDELETE FROM t",
    "COMMIT;\nSET default_transaction_read_only = off;\nUPDATE t SET v = 'x'",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
  ],
)
def test_query_db_refuses_writes(seeded, sql):
  out = reader(seeded).run(sql)
  assert out.status == "refused", out
  assert out.text.startswith(ERROR_PREFIX)
  assert seeded.execute("SELECT count(*), min(v) FROM t") == [(3, "v1")]
  assert seeded.execute("SHOW work_mem") == [("4MB",)]


def test_query_db_release_strings(seeded):
  q = reader(seeded)
  assert q.query("SELECT id, v FROM t ORDER BY id") == (
    "Your query on the database was successful. \n"
    "Your query is: ['SELECT id, v FROM t ORDER BY id'] \n"
    "Result: [(1, 'v1'), (2, 'v2'), (3, 'v3')]"
  )
  # The rows of the last statement with a result set, even an empty one; the whole text is
  # stripped before the split, so a final ";" stays (as in the release).
  assert q.query("SELECT 1;\nSELECT id FROM t WHERE id > 5;\n") == (
    "Your query on the database was successful but no data was returned. \n"
    "Your query is: ['SELECT 1', 'SELECT id FROM t WHERE id > 5;'] \n"
    "Result: []"
  )
  assert q.query("SELECT 2;\nSET work_mem = '8MB'").endswith("Result: [(2,)]")
  assert q.query("SELEC 1").startswith(ERROR_PREFIX + 'syntax error at or near "SELEC"')
  assert q.run("  ").status == "bad_arguments"
  assert QueryDB(None, unavailable_reason="off").query("SELECT 1") == (
    "[query_db] database backend is unavailable for this run. Reason: off"
  )


def test_query_db_clips(seeded):
  out = reader(seeded).query("SELECT g FROM generate_series(1, 10000) g")
  result = out.split("Result: ", 1)[1]
  assert result == str([(g,) for g in range(1, 10001)])[:12_000] + "... [truncated]"
  short = reader(seeded, max_result_chars=10).query("SELECT 123456789, 2")
  assert short.endswith("Result: [(12345678... [truncated]")


def test_query_db_timeout(seeded):
  t0 = time.monotonic()
  out = reader(seeded, statement_timeout_ms=300).run("SELECT pg_sleep(20)")
  assert out.text == ERROR_PREFIX + "canceling statement due to statement timeout\n"
  # Turning the server timeout off leaves the client-side cancel (timeout + 2 s).
  out = reader(seeded, statement_timeout_ms=300).run(
    "SET statement_timeout = 0;\nSELECT pg_sleep(20)"
  )
  assert out.text == ERROR_PREFIX + "canceling statement due to user request\n"
  assert time.monotonic() - t0 < 10


def test_query_db_in_registry(seeded):
  reg = ToolRegistry([query_db_tool(seeded.reader_conninfo())])
  assert "query_db" in reg.tools_block() and "pg_stat_statements" in reg.tools_block()
  assert reg.call("query_db", {"sql": "SELECT count(*) FROM t"}).text.endswith("Result: [(3,)]")
  assert reg.call("query_db", {"sql": "DROP TABLE t"}).status == "refused"


# Teardown --------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_teardown_after_exception_in_with(exc):
  require_postgres()
  seen = {}
  with pytest.raises(exc), LocalPostgres() as cluster:
    cluster.reset()
    triggers.run_trigger(cluster, "LOCK_CONTENTION", PARAMS)  # live background sessions too
    seen.update(tmp=cluster.tmp, pids=cluster_pids(cluster))
    assert len(seen["pids"]) >= 5 and os.path.isdir(cluster.datadir)
    raise exc("boom")
  assert_gone(seen["tmp"], seen["pids"])


# The child restores Python's Ctrl-C handler: a shell without job control (CI running the suite
# in the background) starts it with SIGINT ignored, and Python keeps that.
CHILD = r"""
import importlib.util, json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
spec = importlib.util.spec_from_file_location("ps_pg", sys.argv[1])
m = importlib.util.module_from_spec(spec)
sys.modules["ps_pg"] = m
spec.loader.exec_module(m)
import psycopg2
with m.LocalPostgres() as pg:
  pg.reset()
  pg.execute("CREATE TABLE t (x int)")
  reader = psycopg2.connect(**pg.reader_conninfo().kwargs())
  with reader.cursor() as cur:
    cur.execute("SELECT current_user, current_setting('default_transaction_read_only')")
    who = cur.fetchone()
  reader.close()
  print(json.dumps({"tmp": pg.tmp, "pid": pg.postmaster_pid(), "euid": os.geteuid(),
                    "user": pg.execute("SELECT current_user")[0][0], "reader": who}), flush=True)
  if sys.argv[2] == "wait":
    time.sleep(120)
print("exited cleanly", flush=True)
"""


def _start_child(python: str, mod: str, mode: str, *, prefix: list[str] = (), env=None):
  proc = subprocess.Popen(
    [*prefix, python, "-c", CHILD, mod, mode],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd="/",
  )
  line = proc.stdout.readline()
  if not line:
    proc.wait(timeout=30)
    pytest.fail(f"child failed ({proc.returncode}): {proc.stderr.read()}")
  info = json.loads(line)
  info["pids"] = [info["pid"], *children(info["pid"])]
  return proc, info


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_teardown_when_the_parent_is_interrupted_or_killed(sig):
  """Ctrl-C and SIGTERM unwind the `with`; after SIGKILL the watchdog cleans up."""
  require_postgres()
  proc, info = _start_child(sys.executable, postgres.__file__, "wait")
  assert info["user"] == "test" and len(info["pids"]) >= 5
  os.kill(proc.pid, sig)
  proc.wait(timeout=60)
  assert_gone(info["tmp"], info["pids"])
  if sig != signal.SIGKILL:
    assert proc.returncode != 0 and "exited cleanly" not in proc.stdout.read()


def _python_for(user: str) -> str | None:
  """An interpreter `user` may run with this one's version (a venv in a private home may not be)."""
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  for cand in (sys.executable, shutil.which(f"python{version}"), f"/usr/bin/python{version}"):
    if not cand:
      continue
    out = subprocess.run(
      ["runuser", "-u", user, "--", cand, "-c", "import sys; print(sys.version_info[:2])"],
      capture_output=True,
      text=True,
      cwd="/",
    )
    if out.returncode == 0 and out.stdout.strip() == str(sys.version_info[:2]):
      return cand
  return None


def test_non_root_user_runs_initdb_directly(tmp_path):
  """As a normal user (here `nobody`, from root) LocalPostgres runs initdb/pg_ctl itself."""
  require_postgres()
  if os.geteuid() != 0:
    # Already non-root: the module fixture covered this path; check it quickly anyway.
    with LocalPostgres() as cluster:
      assert cluster.run_as is None
    return
  python = _python_for("nobody")
  if python is None:
    pytest.skip("no Python interpreter of this version that `nobody` may run")
  # Copies readable by nobody: this checkout or venv may sit in a private directory.
  import psycopg2

  share = tempfile.mkdtemp(prefix="ps_jax_pgtest_")
  try:
    site = os.path.dirname(os.path.dirname(psycopg2.__file__))
    for name in os.listdir(site):
      if name.startswith("psycopg2"):
        shutil.copytree(os.path.join(site, name), os.path.join(share, name))
    shutil.copy(postgres.__file__, os.path.join(share, "postgres_module.py"))
    os.chmod(share, 0o755)
    for root, dirs, files in os.walk(share):
      for d in dirs:
        os.chmod(os.path.join(root, d), 0o755)
      for f in files:
        os.chmod(os.path.join(root, f), 0o644)
    env = dict(os.environ, PYTHONPATH=share)
    proc, info = _start_child(
      python,
      os.path.join(share, "postgres_module.py"),
      "exit",
      prefix=["runuser", "-u", "nobody", "--"],
      env=env,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "exited cleanly" in out
    assert info["euid"] == pwd.getpwnam("nobody").pw_uid and info["user"] == "test"
    assert info["reader"] == ["marble_reader", "on"]
    assert_gone(info["tmp"], info["pids"])
  finally:
    shutil.rmtree(share, ignore_errors=True)
