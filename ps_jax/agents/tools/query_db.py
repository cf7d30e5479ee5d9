"""`query_db`: the MARBLE agents' SQL tool, with the release's schema and output strings.

As the release (`marble_db/backend.py`): a new connection per call, `statement_timeout`
15,000 ms, the SQL split on `;` + newline, every statement run, the rows of the last statement
that returned a result set kept, `str(list_of_tuples)` clipped to 12,000 characters (plus
"... [truncated]"), and the release's success / error wrappers.

Deviation: read-only. The release runs anything the model writes as the superuser `test`
(DDL, VACUUM, ALTER SYSTEM, pg_terminate_backend), so one bad query could destroy a case's
evidence or the server. Here every call connects as the read-only role `marble_reader` (see
`ps_jax.agents.postgres`: pg_read_all_data + pg_monitor, no write privilege, read-only by
default) and runs all statements inside one read-only transaction that is rolled back, so
the server refuses writes, DDL, `ALTER SYSTEM`, `COPY ... TO PROGRAM` and `VACUUM` (which
cannot run in a transaction block), and the refusal comes back as the release's error text
with status "refused". A `COMMIT` inside the SQL ends that transaction early; what follows
still runs as a role without write privileges (a VACUUM there is skipped by the server with a
warning, as for any non-owner, and reports success). Timeouts and parameters travel as
connection options, so they are not statements of their own; the transaction's BEGIN and
ROLLBACK do show in pg_stat_statements (the release's `SET statement_timeout = 15000` did
too). A client-side timer cancels a statement that outlives the timeout by 2 s, in case the
model turned `statement_timeout` off. Rows are fetched in full, as in the release; the
timeout is what bounds them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ps_jax.agents.postgres import ConnInfo, split_sql
from ps_jax.agents.tools.registry import Tool, ToolOutput

NAME = "query_db"
DESCRIPTION = (
  "Query the PostgreSQL database with the given SQL statement. "
  "Please keep to the pg_stat_statements table and related catalog views, "
  "and make sure your query itself will not cause the database to hang. "
  "Recommended to use one single query at a time."
)
PARAMETERS = {
  "type": "object",
  "properties": {
    "sql": {
      "type": "string",
      "description": (
        "A SQL query to execute. Recommended tables include "
        "`pg_stat_statements`, `pg_locks`, `pg_stat_user_indexes`, "
        "`pg_indexes`, `pg_stat_all_tables`, `pg_stat_progress_vacuum`, "
        "and `pg_stat_user_tables`. Only include query statements in this param."
      ),
    }
  },
  "required": ["sql"],
  "additionalProperties": False,
}
STATEMENT_TIMEOUT_MS = 15_000
MAX_RESULT_CHARS = 12_000
ERROR_PREFIX = "An error occurred while you tried to query the database: "
UNAVAILABLE = "[query_db] database backend is unavailable for this run. Reason: {reason}"

# SQLSTATEs of the server refusing a write: read-only transaction, missing privilege,
# "cannot run inside a transaction block".
_REFUSED = {"25006", "42501", "25001"}


def format_success(statements: list[str], rows: list[tuple], max_chars: int) -> str:
  preview = str(rows)
  if len(preview) > max_chars:
    preview = preview[:max_chars] + "... [truncated]"
  empty = "" if len(rows) else " but no data was returned"
  return (
    f"Your query on the database was successful{empty}. \n"
    f"Your query is: {statements} \n"
    f"Result: {preview}"
  )


class QueryDB:
  """The tool bound to one database (normally `LocalPostgres.reader_conninfo()`).

  `query(sql)` returns the release's text; `run(sql)` also returns a status ("ok", "error",
  "refused", "bad_arguments") for the registry; `tool()` wraps it as a registry `Tool`.
  `read_only=False` gives the release's behaviour (only for a role that may write).
  """

  def __init__(
    self,
    conninfo: ConnInfo | None,
    *,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    max_result_chars: int = MAX_RESULT_CHARS,
    read_only: bool = True,
    unavailable_reason: str = "no database configured",
  ):
    self.conninfo = conninfo
    self.statement_timeout_ms = int(statement_timeout_ms)
    self.max_result_chars = int(max_result_chars)
    self.read_only = read_only
    self.unavailable_reason = unavailable_reason
    self.calls = 0

  def query(self, sql: str) -> str:
    return self.run(sql).text

  def run(self, sql: Any) -> ToolOutput:
    self.calls += 1
    sql = str(sql if sql is not None else "").strip()
    if not sql:
      return ToolOutput(
        "[query_db] invalid arguments: sql must be a non-empty string", "bad_arguments"
      )
    if self.conninfo is None:
      return ToolOutput(UNAVAILABLE.format(reason=self.unavailable_reason), "error")
    statements = split_sql(sql)
    if not statements:
      return ToolOutput("[query_db] empty SQL query", "bad_arguments")
    import psycopg2  # pylint: disable=import-outside-toplevel

    options = f"-c statement_timeout={self.statement_timeout_ms}"
    if self.read_only:
      options += " -c default_transaction_read_only=on"
    conn = timer = None
    try:
      conn = psycopg2.connect(**self.conninfo.kwargs(options=options))
      # One transaction for the whole call (read-only through the option above); it is
      # rolled back, so nothing a statement did survives the call.
      conn.autocommit = not self.read_only
      timer = threading.Timer((self.statement_timeout_ms + 2000) / 1000, conn.cancel)
      timer.daemon = True
      timer.start()
      rows: list[tuple] = []
      with conn.cursor() as cur:
        for statement in statements:
          cur.execute(statement)
          if cur.description is not None:
            rows = cur.fetchall()
      return ToolOutput(format_success(statements, rows, self.max_result_chars))
    except psycopg2.Error as e:
      status = "refused" if getattr(e, "pgcode", None) in _REFUSED else "error"
      return ToolOutput(ERROR_PREFIX + str(e), status)
    except Exception as e:  # pylint: disable=broad-except  # the model sees every failure as text
      return ToolOutput(ERROR_PREFIX + str(e), "error")
    finally:
      if timer is not None:
        timer.cancel()
      if conn is not None:
        with contextlib.suppress(Exception):
          conn.rollback()
        with contextlib.suppress(Exception):
          conn.close()

  def __call__(self, sql: str) -> ToolOutput:
    return self.run(sql)

  def tool(self) -> Tool:
    return Tool(NAME, DESCRIPTION, PARAMETERS, self.run)


def query_db_tool(conninfo: ConnInfo | None, **kw) -> Tool:
  """The registry tool: `registry.register(query_db_tool(pg.reader_conninfo()))`."""
  return QueryDB(conninfo, **kw).tool()
