"""MARBLE cases: the vendored file, the release's label scorer, chance level, per-case setup."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import tomllib
from fractions import Fraction

import pytest

from ps_jax.agents import postgres
from ps_jax.agents.marble import (
  ANOMALIES,
  SHA256,
  chance_baseline,
  correct,
  default_path,
  extract_predicted_root_causes,
  load_cases,
  query_tool,
  score_case,
  setup_case,
  summarize,
  task_score,
)
from ps_jax.agents.marble.scoring import chance_case

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["INSERT_LARGE_DATA", "LOCK_CONTENTION", "VACUUM", "REDUNDANT_INDEX", "FETCH_LARGE_DATA"]


@pytest.fixture(scope="module")
def cases():
  return load_cases()


# The vendored file -----------------------------------------------------------------------------


def test_sha256_is_the_noted_one(cases):
  # The research note gives e1128d94…8a1542631; the full value is checked at every load.
  assert SHA256.startswith("e1128d94") and SHA256.endswith("8a1542631") and len(SHA256) == 64
  assert len(cases) == 100 and [c.task_id for c in cases] == list(range(1, 101))


def test_label_distribution(cases):
  assert all(list(c.labels) == LABELS for c in cases)
  assert set(LABELS) == set(ANOMALIES)
  single = [c for c in cases if len(c.root_causes) == 1]
  double = [c for c in cases if len(c.root_causes) == 2]
  assert len(single) == 50 and len(double) == 50
  assert all(c.number_of_labels_pred == 2 and "only two" in c.content for c in single)
  assert all(c.number_of_labels_pred == 3 and "only three" in c.content for c in double)
  assert collections.Counter(c.root_causes[0] for c in single) == {lab: 10 for lab in LABELS}
  pairs = collections.Counter(frozenset(c.root_causes) for c in double)
  assert sorted(pairs.values()) == [10] * 5
  assert pairs[frozenset({"VACUUM", "FETCH_LARGE_DATA"})] == 10
  # The triggered anomalies are the gold causes, with the release's parameters.
  for c in cases:
    assert {a["anomaly"] for a in c.anomalies} == set(c.root_causes)
    assert all(
      (a["threads"], a["ncolumn"], a["nrow"], a["colsize"]) == (100, 20, 20000, 100)
      for a in c.anomalies
    )
    assert [a.agent_id for a in c.agents] == [f"agent{i}" for i in range(1, 6)]
    assert all(lab in a.profile for a, lab in zip(c.agents, LABELS, strict=True))


def test_loader_rejects_other_files(tmp_path):
  with open(default_path(), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  changed = tmp_path / "db.jsonl"
  changed.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
  with pytest.raises(ValueError, match="sha256"):
    load_cases(changed)
  assert len(load_cases(changed, sha256=None)) == 3
  del rows[1]["environment"]["init_sql"]
  changed.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
  with pytest.raises(ValueError, match=r"row 2: missing field 'environment.init_sql'"):
    load_cases(changed, sha256=None)
  rows[0]["task"]["root_causes"] = ["CPU_CONTENTION"]
  changed.write_text(json.dumps(rows[0]) + "\n")
  with pytest.raises(ValueError, match="not within task.labels"):
    load_cases(changed, sha256=None)


def test_data_ships_with_the_package():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
  assert "data/marble/*" in package_data["ps_jax.agents"]
  here = os.path.dirname(default_path())
  assert sorted(os.listdir(here)) == ["LICENSE", "README.md", "database_main.jsonl"]
  with open(os.path.join(here, "LICENSE")) as f:
    assert f.read().startswith("MIT License")
  with open(os.path.join(here, "README.md")) as f:
    assert SHA256 in f.read()


# Scoring (agentic.md §3.8) ---------------------------------------------------------------------


@pytest.mark.parametrize(
  ("raw", "n", "want"),
  [
    (
      'Rationale: ...\n<answer>["LOCK_CONTENTION", "VACUUM"]</answer>',
      2,
      ["LOCK_CONTENTION", "VACUUM"],
    ),
    # The last non-empty <answer> block wins.
    (
      '<answer>["VACUUM"]</answer> on second thought <answer>["FETCH_LARGE_DATA"]</answer>'
      "<answer> </answer>",
      2,
      ["FETCH_LARGE_DATA"],
    ),
    # Contained labels count, in the allowed labels' order; lower case is fine.
    (
      '<answer>["vacuum issue", "lock_contention and insert_large_data"]</answer>',
      3,
      ["VACUUM", "INSERT_LARGE_DATA", "LOCK_CONTENTION"],
    ),
    # Preferred keys: other string values are ignored, then the payload scan adds more labels.
    (
      '<answer>{"root_causes": ["REDUNDANT_INDEX"], "note": "not VACUUM"}</answer>',
      1,
      ["REDUNDANT_INDEX"],
    ),
    (
      '<answer>{"root_causes": ["REDUNDANT_INDEX"], "note": "not VACUUM"}</answer>',
      2,
      ["REDUNDANT_INDEX", "VACUUM"],
    ),
    # Without <answer>: the text after </think>, labels in order of first appearance.
    (
      "<think>VACUUM? FETCH_LARGE_DATA?</think>The evidence shows lock_contention, then "
      "INSERT_LARGE_DATA and VACUUM.",
      2,
      ["LOCK_CONTENTION", "INSERT_LARGE_DATA"],
    ),
    # A fenced JSON block and a JSON span inside prose.
    ('<answer>```json\n["FETCH_LARGE_DATA"]\n```</answer>', 2, ["FETCH_LARGE_DATA"]),
    ('<answer>I pick ["VACUUM", "NOT_A_LABEL"] because</answer>', 1, ["VACUUM"]),
    ("<answer>[]</answer>", 2, []),
    ("no labels at all", 3, []),
  ],
)
def test_extract_predicted_root_causes(raw, n, want):
  assert extract_predicted_root_causes(raw, LABELS, max_labels=n) == want


def test_task_score_and_correct(cases):
  double = next(c for c in cases if set(c.root_causes) == {"VACUUM", "FETCH_LARGE_DATA"})
  half = score_case('<answer>["VACUUM", "LOCK_CONTENTION", "INSERT_LARGE_DATA"]</answer>', double)
  assert (half["hit_count"], half["task_score"], half["correct"]) == (1, 0.5, False)
  full = score_case('<answer>["FETCH_LARGE_DATA", "LOCK_CONTENTION", "VACUUM"]</answer>', double)
  assert (full["task_score"], full["correct"]) == (1.0, True)
  # At most 3 labels count, so a fourth correct one is cut off.
  cut = score_case(
    '<answer>["LOCK_CONTENTION", "INSERT_LARGE_DATA", "VACUUM", "FETCH_LARGE_DATA"]</answer>',
    double,
  )
  assert cut["predicted_root_causes"] == ["LOCK_CONTENTION", "INSERT_LARGE_DATA", "VACUUM"]
  assert cut["task_score"] == 0.5
  assert task_score(["A"], ["A", "B"]) == 0.5 and correct(["B", "A"], ["A", "B"])
  assert task_score(["A"], []) == 0.0
  summary = summarize([half, full, {**full, "ttft_sec": 0.25}])
  assert summary["samples"] == 3 and summary["correct"] == 2
  assert summary["accuracy"] == pytest.approx(2 / 3)
  assert summary["avg_task_score"] == pytest.approx(2.5 / 3)
  assert summary["avg_ttft_sec"] == 0.25 and summary["ttft_measured_samples"] == 1


def test_chance_baseline(cases):
  assert chance_case(5, 1, 2) == (Fraction(2, 5), Fraction(2, 5))
  assert chance_case(5, 2, 3) == (Fraction(3, 10), Fraction(3, 5))
  assert chance_case(5, 2, 1)[0] == 0
  got = chance_baseline(cases)
  assert got["accuracy"] == pytest.approx(0.35, abs=1e-12)
  assert got["avg_task_score"] == pytest.approx(0.50, abs=1e-12)
  assert chance_baseline(cases[:10])["accuracy"] == pytest.approx(0.4)  # all single-cause


# Setup of a case on a live server --------------------------------------------------------------


@pytest.fixture(scope="module")
def pg():
  reason = postgres.available()
  if reason is not None:
    if os.environ.get("PS_JAX_REQUIRE_POSTGRES", "") not in ("", "0"):
      pytest.fail(f"PS_JAX_REQUIRE_POSTGRES is set but PostgreSQL is unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")
  with postgres.LocalPostgres() as cluster:
    yield cluster


def test_setup_case_two_causes(pg, cases):
  case = next(c for c in cases if set(c.root_causes) == {"LOCK_CONTENTION", "REDUNDANT_INDEX"})
  report = setup_case(pg, case, settle_s=0.2)
  assert set(report.triggers_s) == {"LOCK_CONTENTION", "REDUNDANT_INDEX"}
  assert report.init_statements > 5 and report.total_s > 0
  q = query_tool(pg)
  assert q.query("SELECT count(*) FROM pg_locks WHERE NOT granted").endswith("Result: [(4,)]")
  assert q.query(
    "SELECT count(*) FROM pg_stat_user_indexes WHERE relname = 'marble_redundant_index' "
    "AND idx_scan = 0"
  ).endswith("Result: [(4,)]")
  # The domain schema is there; the init SQL's own statements were wiped from the statistics.
  tables = {t for (t,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
  assert {"marble_lock_contention", "marble_redundant_index"} < tables and len(tables) > 4
  first_create = next(s for s in case.init_sql.split(";") if "CREATE TABLE" in s)
  name = first_create.split("CREATE TABLE", 1)[1].split("(")[0].strip()
  assert pg.execute(
    "SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s", (f"CREATE TABLE {name}%",)
  ) == [(0,)]
  # The next case starts clean: no waiting sessions, no marble tables.
  setup_case(pg, next(c for c in cases if c.root_causes == ("VACUUM",)), settle_s=0)
  assert pg.execute("SELECT count(*) FROM pg_locks WHERE NOT granted") == [(0,)]
  assert pg.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'marble_lock%'") == [(0,)]


def test_every_init_sql_runs_on_postgres(pg, cases):
  # Each case's schema in its own namespace, one transaction per case (faster than a reset).
  pg.reset()
  with contextlib.closing(pg.connect(autocommit=False)) as conn, conn.cursor() as cur:
    for c in cases:
      cur.execute(f"CREATE SCHEMA c{c.task_id}; SET search_path TO c{c.task_id}")
      for statement in postgres.split_sql(c.init_sql):
        cur.execute(statement)
      conn.commit()
  assert pg.execute("SELECT count(DISTINCT schemaname) FROM pg_tables WHERE schemaname ~ '^c'") == [
    (100,)
  ]
