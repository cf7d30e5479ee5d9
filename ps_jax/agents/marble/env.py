"""Per-case MARBLE environment on a `LocalPostgres`, in the release's order (`setup()` of
`MarbleDockerDBSession`): fresh database, the case's init SQL, pg_stat_statements reset, the
anomaly triggers, a settle sleep."""

from __future__ import annotations

import contextlib
import dataclasses
import time

from ps_jax.agents.marble.triggers import TriggerParams, run_trigger
from ps_jax.agents.postgres import LocalPostgres, split_sql
from ps_jax.agents.tools.query_db import QueryDB

SETTLE_S = 2.0  # the release's db_post_setup_sleep_sec


@dataclasses.dataclass
class SetupReport:
  task_id: int
  reset_s: float = 0.0
  init_sql_s: float = 0.0
  init_statements: int = 0
  triggers_s: dict[str, float] = dataclasses.field(default_factory=dict)
  settle_s: float = 0.0

  @property
  def total_s(self) -> float:
    return self.reset_s + self.init_sql_s + sum(self.triggers_s.values()) + self.settle_s


def setup_case(
  pg: LocalPostgres, case, *, settle_s: float = SETTLE_S, lock_hold_s: float | None = None
) -> SetupReport:
  """Prepares `pg` for one case; `lock_hold_s` as in `triggers` (None: hold until the next
  reset or teardown)."""
  report = SetupReport(case.task_id)
  t0 = time.perf_counter()
  pg.reset()
  report.reset_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  statements = split_sql(case.init_sql)
  with (
    contextlib.closing(pg.connect(application_name="marble_setup")) as conn,
    conn.cursor() as cur,
  ):
    cur.execute("SET client_min_messages TO WARNING")
    for statement in statements:
      cur.execute(statement)
    cur.execute("RESET client_min_messages")
    cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    cur.execute("SELECT pg_stat_statements_reset()")
  report.init_sql_s = time.perf_counter() - t0
  report.init_statements = len(statements)

  for entry in case.anomalies:
    name = str(entry["anomaly"]).strip()
    report.triggers_s[name] = run_trigger(
      pg, name, TriggerParams.from_anomaly(entry), lock_hold_s=lock_hold_s
    )
  if settle_s > 0:
    time.sleep(settle_s)
  report.settle_s = settle_s
  return report


def query_tool(pg: LocalPostgres, **kw) -> QueryDB:
  """The agents' read-only `query_db` on this cluster's `sysbench`."""
  return QueryDB(pg.reader_conninfo(), **kw)
