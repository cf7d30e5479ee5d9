"""The five MARBLE anomaly triggers, written for ps_jax (not the release's script).

The release replaced MARBLE's DB-GPT workloads by a small script that leaves, in the
`sysbench` database, the statistics evidence of the five anomalies of the dataset. These
functions leave the same evidence (same table names, statement shapes, row counts and call
counts, so the experts' probes see what they saw in the release):

- INSERT_LARGE_DATA: 12 parallel `INSERT ... SELECT generate_series` of 4,000 rows x 20
  varchar(100) into a fresh table -> pg_stat_statements: 12 INSERT calls, 48,000 rows, a
  large total_exec_time.
- REDUNDANT_INDEX: 5,000 rows, indexes (c1) x2 and (c1, c2) x2, one probe SELECT ordered by
  the primary key -> pg_stat_user_indexes: 4 duplicates with idx_scan 0, the pkey 1.
- LOCK_CONTENTION: 2,000 rows; one session updates id=1 and keeps its transaction open, 4
  sessions update the same row and wait -> pg_locks: 3 tuple ExclusiveLock + 1
  transactionid ShareLock not granted; pg_stat_activity: 4 sessions waiting on Lock.
- VACUUM: 5,000 rows with autovacuum off, 90% deleted, then `VACUUM FULL` ->
  pg_stat_statements: `VACUUM FULL marble_vacuum` once; pg_stat_user_tables: n_dead_tup 4,499.
- FETCH_LARGE_DATA: 20,000 rows of 256-char payload, 24 parallel
  `SELECT * ... ORDER BY id LIMIT 100` -> pg_stat_statements: 24 calls, 2,400 rows (as in the
  release, not really a large fetch).

Parameters come from the case's `environment.anomalies` entry (threads 100, ncolumn 20,
nrow 20000, colsize 100 in every case) and are clamped as in the release: at most 20
columns, column width 8..200, at most 8 parallel sessions; row counts are nrow clamped per
anomaly (INSERT 200..4,000 per call, LOCK 100..2,000, VACUUM and REDUNDANT_INDEX 1,000..5,000,
FETCH 5,000..20,000). Each statement runs on its own connection named `marble_*`, as in the
release. Every trigger seeds its own table, so seeding INSERTs appear in pg_stat_statements
for every anomaly (a distractor for the INSERT expert, as in the release).

LOCK_CONTENTION's time dependence. The release's holder is a detached process that commits
after max(60 s, duration): an agent querying more than a minute after setup (any slow CPU
run) finds clean pg_locks and only the waiters' long UPDATEs in pg_stat_statements, while a
fast GPU run sees the blocked sessions. Policy here (a flagged deviation): by default
(`lock_hold_s=None`) the holder keeps its transaction open until the case's `reset()` or the
cluster's teardown, so every run, however slow, sees the live contention in pg_locks and
pg_stat_activity (and pg_stat_statements shows only the holder's UPDATE, since blocked
statements record nothing until they finish). `lock_hold_s=60` reproduces the release (its
hold is max(60 s, the --duration 5 it passes)): the holder commits after that many seconds
and the waiters (statement_timeout hold + 15 s) then finish one after another. Holder and
waiters are threads of this process (the release: detached processes) with their own
connections, registered with `LocalPostgres.add_cleanup`: reset and teardown cancel the
waiters and roll the holder back; if this process dies, its connections close and the
server releases the locks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ps_jax.agents.postgres import LocalPostgres

ANOMALIES = (
  "INSERT_LARGE_DATA",
  "LOCK_CONTENTION",
  "VACUUM",
  "REDUNDANT_INDEX",
  "FETCH_LARGE_DATA",
)


def _clamp(x: Any, lo: int, hi: int) -> int:
  return max(lo, min(int(x), hi))


@dataclasses.dataclass(frozen=True)
class TriggerParams:
  """One `environment.anomalies` entry; the properties are the clamped values in use."""

  threads: int = 100
  ncolumn: int = 20
  nrow: int = 20000
  colsize: int = 100

  @classmethod
  def from_anomaly(cls, entry: Mapping[str, Any]) -> TriggerParams:
    kw = {}
    for key in ("threads", "ncolumn", "nrow", "colsize"):
      if entry.get(key) not in (None, ""):
        try:
          kw[key] = int(entry[key])
        except (TypeError, ValueError) as e:
          raise ValueError(f"anomaly {entry.get('anomaly')!r}: {key}={entry[key]!r}") from e
    return cls(**kw)

  @property
  def workers(self) -> int:
    return _clamp(self.threads, 1, 8)

  @property
  def columns(self) -> int:
    return _clamp(self.ncolumn, 1, 20)

  @property
  def width(self) -> int:
    return _clamp(self.colsize, 8, 200)


def _run(pg: LocalPostgres, sql: str, app: str) -> None:
  with (
    contextlib.closing(pg.connect(application_name=app)) as conn,
    conn.cursor() as cur,
  ):
    cur.execute(sql)


def _parallel(fn: Callable[[int], None], workers: int, calls: int) -> None:
  with ThreadPoolExecutor(max_workers=workers) as pool:
    for f in [pool.submit(fn, i) for i in range(max(workers, calls))]:
      f.result()  # re-raises a failed call


def _random_cols(p: TriggerParams) -> str:
  return ", ".join([f"substr(md5(random()::text), 1, {p.width})"] * p.columns)


def _make_table(pg: LocalPostgres, table: str, p: TriggerParams, *, rows: int, with_: str = ""):
  cols = ", ".join(f"c{i} varchar({p.width})" for i in range(1, p.columns + 1))
  _run(pg, f"DROP TABLE IF EXISTS {table}", "marble_setup")
  _run(
    pg,
    f"CREATE TABLE {table} (id integer PRIMARY KEY, {cols}, "
    f"created_at timestamptz DEFAULT now()){with_}",
    "marble_setup",
  )
  if rows:
    _fill(pg, table, p, first=1, count=rows)


def _fill(pg: LocalPostgres, table: str, p: TriggerParams, *, first: int, count: int) -> None:
  _run(
    pg,
    f"INSERT INTO {table} SELECT g, {_random_cols(p)}, now() "
    f"FROM generate_series({first}, {first + count - 1}) AS g",
    "marble_insert_rows",
  )


def insert_large_data(pg: LocalPostgres, p: TriggerParams) -> None:
  table, calls = "marble_insert_large_data", 12
  per_call = _clamp(p.nrow, 200, 4000)
  _make_table(pg, table, p, rows=0)
  _parallel(lambda i: _fill(pg, table, p, first=1 + i * per_call, count=per_call), p.workers, calls)


def redundant_index(pg: LocalPostgres, p: TriggerParams) -> None:
  table = "marble_redundant_index"
  _make_table(pg, table, p, rows=_clamp(p.nrow, 1000, 5000))
  for suffix, cols in (
    ("c1_a", "c1"),
    ("c1_b", "c1"),
    ("c1_c2_a", "c1, c2"),
    ("c1_c2_b", "c1, c2"),
  ):
    _run(pg, f"CREATE INDEX idx_{table}_{suffix} ON {table} ({cols})", "marble_redundant_index")
  # Ordered by id: the planner reads the primary key, so only the duplicates stay unused.
  _run(
    pg,
    f"SELECT * FROM {table} WHERE c1 IS NOT NULL ORDER BY id LIMIT 100",
    "marble_redundant_index_probe",
  )


def vacuum(pg: LocalPostgres, p: TriggerParams) -> None:
  table = "marble_vacuum"
  rows = _clamp(p.nrow, 1000, 5000)
  # Autovacuum off from the start, so it cannot clear the dead tuples before an agent looks.
  _make_table(pg, table, p, rows=rows, with_=" WITH (autovacuum_enabled = false)")
  _run(pg, f"DELETE FROM {table} WHERE id < {max(2, int(rows * 0.9))}", "marble_vacuum_delete")
  _run(pg, f"VACUUM FULL {table}", "marble_vacuum_full")


def fetch_large_data(pg: LocalPostgres, p: TriggerParams) -> None:
  table = "marble_fetch_orders"
  _run(pg, f"DROP TABLE IF EXISTS {table}", "marble_setup")
  _run(
    pg,
    f"CREATE TABLE {table} (id integer PRIMARY KEY, order_priority varchar(15), "
    "order_date date, payload text)",
    "marble_fetch_setup",
  )
  _run(
    pg,
    f"INSERT INTO {table} SELECT g, "
    "CASE WHEN random() > 0.5 THEN '1-URGENT' ELSE '5-LOW' END, "
    "date '1996-03-01' + (random() * 800)::int, "
    "repeat(substr(md5(random()::text), 1, 32), 8) "
    f"FROM generate_series(1, {_clamp(p.nrow, 5000, 20000)}) AS g",
    "marble_fetch_seed",
  )
  query = f"SELECT * FROM {table} ORDER BY id LIMIT 100"
  _parallel(lambda _: _run(pg, query, "marble_fetch_large_data"), p.workers, 24)


class LockSessions:
  """The holder and waiters of LOCK_CONTENTION (threads with their own connections)."""

  def __init__(self, pg: LocalPostgres, table: str, p: TriggerParams, hold_s: float | None):
    self.pg, self.table, self.p, self.hold_s = pg, table, p, hold_s
    self.released = threading.Event()
    self.holding = threading.Event()
    self.errors: list[BaseException] = []
    self._conns: list[Any] = []
    self._threads: list[threading.Thread] = []
    self._guard = threading.Lock()
    self._stopping = False

  def _update(self) -> str:
    return (
      f"UPDATE {self.table} SET c1 = substr(md5(random()::text), 1, {self.p.width}) WHERE id = 1"
    )

  def _connect(self, app: str):
    conn = self.pg.connect(autocommit=False, application_name=app)
    with self._guard:
      self._conns.append(conn)
      if self._stopping:
        conn.cancel()
    return conn

  def _holder(self) -> None:
    conn = None
    try:
      conn = self._connect("marble_lock_holder")
      with conn.cursor() as cur:
        cur.execute(self._update())
      self.holding.set()
      if self.released.wait(self.hold_s):
        conn.rollback()  # stopped early (reset/teardown): nothing to keep
      else:
        conn.commit()  # the release's behaviour after its hold
    except Exception as e:  # pylint: disable=broad-except
      if not self._stopping:
        self.errors.append(e)
    finally:
      self.holding.set()
      if conn is not None:
        with contextlib.suppress(Exception):
          conn.close()

  def _waiter(self) -> None:
    conn = None
    try:
      conn = self._connect("marble_lock_waiter")
      with conn.cursor() as cur:
        timeout_ms = 0 if self.hold_s is None else int((self.hold_s + 15) * 1000)
        cur.execute("SET statement_timeout = %s", (timeout_ms,))
        cur.execute(self._update())
      conn.commit()
    except Exception as e:  # pylint: disable=broad-except
      if not self._stopping:
        self.errors.append(e)
    finally:
      if conn is not None:
        with contextlib.suppress(Exception):
          conn.close()

  def _spawn(self, fn: Callable[[], None], name: str) -> None:
    t = threading.Thread(target=fn, name=name, daemon=True)
    self._threads.append(t)
    t.start()

  def start(self, waiters: int, timeout_s: float = 30.0) -> None:
    self._spawn(self._holder, "marble_lock_holder")
    if not self.holding.wait(timeout_s) or self.errors:
      raise RuntimeError(f"LOCK_CONTENTION: the holder did not take the lock: {self.errors}")
    for i in range(waiters):
      self._spawn(self._waiter, f"marble_lock_waiter_{i}")
    # Done when every waiter is blocked (deterministic, unlike the release's fixed sleeps).
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      rows = self.pg.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE NOT l.granted AND a.application_name = 'marble_lock_waiter'"
      )
      if rows[0][0] >= waiters or self.errors:
        break
      time.sleep(0.05)
    if self.errors:
      raise RuntimeError(f"LOCK_CONTENTION: a session failed: {self.errors}")

  def stop(self) -> None:
    with self._guard:
      self._stopping = True
      conns = list(self._conns)
    for c in conns[1:]:  # waiters first, so none takes the lock when the holder lets go
      with contextlib.suppress(Exception):
        c.cancel()
    self.released.set()
    for t in self._threads:
      t.join(timeout=10)


def lock_contention(pg: LocalPostgres, p: TriggerParams, *, hold_s: float | None = None) -> None:
  table = "marble_lock_contention"
  _make_table(pg, table, p, rows=_clamp(p.nrow, 100, 2000))
  sessions = LockSessions(pg, table, p, hold_s)
  pg.add_cleanup(sessions.stop)
  sessions.start(waiters=_clamp(p.threads, 2, 4))


def run_trigger(
  pg: LocalPostgres,
  anomaly: str,
  params: TriggerParams | Mapping[str, Any] | None = None,
  *,
  lock_hold_s: float | None = None,
) -> float:
  """Runs one anomaly's trigger; returns its wall time in seconds."""
  if not isinstance(params, TriggerParams):
    params = TriggerParams.from_anomaly(params or {})
  fns = {
    "INSERT_LARGE_DATA": insert_large_data,
    "REDUNDANT_INDEX": redundant_index,
    "VACUUM": vacuum,
    "FETCH_LARGE_DATA": fetch_large_data,
  }
  t0 = time.perf_counter()
  if anomaly == "LOCK_CONTENTION":
    lock_contention(pg, params, hold_s=None if lock_hold_s is None else float(lock_hold_s))
  elif anomaly in fns:
    fns[anomaly](pg, params)
  else:
    raise ValueError(f"unknown anomaly {anomaly!r}; supported: {', '.join(ANOMALIES)}")
  return time.perf_counter() - t0
