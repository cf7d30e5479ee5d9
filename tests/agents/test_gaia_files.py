"""gaia-files: every gold answer recomputed from the written files with code of its own (pandas,
openpyxl, python-docx, pypdf, csv/json/regex), the files readable by parse_file, determinism."""

from __future__ import annotations

import csv
import datetime
import json
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from ps_jax.agents import ScriptedPolicy, default_registry, run_react, worker_messages
from ps_jax.agents.gaia import (
  KINDS,
  gaia_files_tasks,
  score_official,
  score_release,
  write_pdf,
)
from ps_jax.agents.tools.files import parse_file

SEED, N = 11, 2 * len(KINDS)  # every kind twice


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  return gaia_files_tasks(tmp_path_factory.mktemp("gaia_files"), N, SEED)


def _arg(pattern: str, question: str) -> str:
  m = re.search(pattern, question)
  assert m, f"{pattern!r} not in {question!r}"
  return m.group(1)


def _money(d: Decimal) -> str:
  return str(d.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _recompute(kind: str, q: str, files) -> str:
  import pandas as pd

  if kind == "csv_sum":
    df = pd.read_csv(files[0])
    return str(int(df.loc[df["region"] == _arg(r"sold in the (\w+) region", q), "units"].sum()))
  if kind == "csv_mean":
    df = pd.read_csv(files[0])
    scores = df.loc[df["subject"] == _arg(r"mean score in (\w+)\?", q), "score"]
    return _money(Decimal(int(scores.sum())) / Decimal(len(scores)))
  if kind == "xlsx_max":
    import openpyxl

    rows = list(openpyxl.load_workbook(files[0])["Staff"].iter_rows(min_row=2, values_only=True))
    dept = [r for r in rows if r[1] == _arg(r"in the (\w+) department", q)]
    top = max(r[2] for r in dept)
    assert sum(r[2] == top for r in dept) == 1, "the highest salary must be unique"
    return next(r[0] for r in dept if r[2] == top)
  if kind == "xlsx_count":
    import openpyxl

    ws = openpyxl.load_workbook(files[0])["Inventory"]
    cat = _arg(r"in the (\w+) category", q)
    return str(
      sum(1 for r in ws.iter_rows(min_row=2, values_only=True) if r[1] == cat and r[2] < r[3])
    )
  if kind == "xlsx_list":
    sheets = pd.read_excel(files[0], sheet_name=None)
    df = sheets["Catalogue"].merge(sheets["Stock"], on="Item", validate="one_to_one")
    low = df[
      (df["Category"] == _arg(r"items of the (\w+) category", q))
      & (df["Stock"] < df["Reorder level"])
    ]
    return ", ".join(sorted(low["Item"]))
  if kind == "json_csv_join":
    catalogue = json.loads(files[0].read_text())["products"]
    (sku,) = [p["sku"] for p in catalogue if p["name"] == _arg(r"product named (\w+), in", q)]
    price = Decimal(str(next(p["unit_price"] for p in catalogue if p["sku"] == sku)))
    with open(files[1], newline="") as f:
      qty = sum(int(r["quantity"]) for r in csv.DictReader(f) if r["sku"] == sku)
    return _money(price * qty)
  if kind == "txt_date_diff":
    a, b = re.findall(r"'([^']+)' milestone", q)
    dates = {
      m.group(2): datetime.date.fromisoformat(m.group(1))
      for m in re.finditer(r"^(\d{4}-\d\d-\d\d)\s+(.+)$", files[0].read_text(), re.MULTILINE)
    }
    return str(abs((dates[b] - dates[a]).days))
  if kind == "docx_words":
    import docx

    paras = docx.Document(str(files[0])).paragraphs
    heading = _arg(r"heading '([^']+)'", q)
    (i,) = [i for i, p in enumerate(paras) if p.style.name == "Heading 1" and p.text == heading]
    return str(len(re.findall(r"\S+", paras[i + 1].text)))
  if kind == "txt_log_count":
    service = _arg(r"from the (\w+) service", q)
    lines = files[0].read_text().splitlines()
    return str(sum(1 for s in lines if re.fullmatch(rf"\S+ ERROR {service}: .*", s)))
  if kind == "pdf_invoices":
    import pypdf

    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(files[0]).pages)
    rows = re.findall(r"Client: (.+?) \| Amount: \$([\d,]+\.\d\d)", text)
    assert len(rows) == text.count("INV-") > 0, "every invoice line must be readable"
    client = _arg(r"invoiced to (.+), in dollars", q)
    return _money(sum((Decimal(a.replace(",", "")) for c, a in rows if c == client), Decimal(0)))
  raise AssertionError(f"no recomputation for kind {kind}")


def test_gold_answers_recomputed_from_the_files(tasks):
  assert [t.task_id.rsplit("-", 1)[0] for t in tasks] == [f"gf-{SEED}-{i:04d}" for i in range(N)]
  kinds = [re.fullmatch(r"gf-\d+-\d{4}-(\w+)", t.task_id).group(1) for t in tasks]
  assert sorted(set(kinds)) == sorted(KINDS)
  for kind, t in zip(kinds, tasks, strict=True):
    assert t.level in (1, 2) and t.files and t.scorable
    assert _recompute(kind, t.question, t.files) == t.gold, t.task_id
    assert score_official(t.gold, t.gold) and score_release(t.gold, t.gold)


def test_files_exist_and_parse(tasks):
  out_dir = tasks[0].files[0].parent
  names = [p.name for t in tasks for p in t.files]
  assert len(names) == len(set(names))
  assert {p.suffix for t in tasks for p in t.files} == {
    ".csv",
    ".xlsx",
    ".json",
    ".txt",
    ".docx",
    ".log",
    ".pdf",
  }
  for t in tasks:
    for p in t.files:
      assert p.is_file() and p.parent == out_dir
      out = parse_file([str(p)])
      assert out.status == "ok" and "[error]" not in out.text and "[clipped" not in out.text


def test_deterministic_in_seed(tasks, tmp_path):
  def plain(ts):
    return [(t.task_id, t.question, t.gold, t.level, [p.name for p in t.files]) for t in ts]

  def contents(ts):  # parsed text, path header dropped (xlsx/docx bytes hold timestamps)
    return [parse_file([str(p)]).text.split("\n", 1)[1] for t in ts for p in t.files]

  again = gaia_files_tasks(tmp_path / "again", N, SEED)
  assert plain(again) == plain(tasks) and contents(again) == contents(tasks)
  prefix = gaia_files_tasks(tmp_path / "prefix", 3, SEED)
  assert plain(prefix) == plain(tasks[:3])  # task i does not depend on num_tasks
  other = gaia_files_tasks(tmp_path / "other", N, SEED + 1)
  assert sum(a[1:3] != b[1:3] for a, b in zip(plain(other), plain(tasks), strict=True)) >= N - 2


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="num_tasks must be a positive integer, got 0"):
    gaia_files_tasks(tmp_path, 0, 0)
  with pytest.raises(TypeError, match="seed must be an int"):
    gaia_files_tasks(tmp_path, 1, "0")  # type: ignore[arg-type]
  with pytest.raises(ValueError, match="at most 50 ASCII lines"):
    write_pdf(tmp_path / "x.pdf", ["caf\u00e9"])
  write_pdf(tmp_path / "y.pdf", ["a (b) \\ c", "second"])
  text = parse_file([str(tmp_path / "y.pdf")]).text
  assert "a (b) \\ c\nsecond" in text


def test_react_worker_reads_the_attachment_and_is_scored(tasks):
  """One task through the release's loop with the default tools and a scripted model that
  reads the attachment, then answers in dollar format: the leaderboard's rule accepts the
  answer, the release's does not."""
  task = next(t for t in tasks if t.task_id.endswith("pdf_invoices"))
  files = [str(p) for p in task.files]
  read = '<tool_call>\n{"name": "parse_file", "arguments": {"files": %s}}\n</tool_call>'
  whole, cents = task.gold.split(".")
  answer = f"<answer>${int(whole):,}.{cents}</answer>"
  registry = default_registry()
  (trace,) = run_react(
    ScriptedPolicy([[read % json.dumps(files), answer]]),
    registry,
    [worker_messages(registry, task.question, files, date="2026-01-01")],
  )
  assert trace.steps[0].calls[0]["status"] == "ok"
  assert "Invoice register, 2024" in trace.steps[0].calls[0]["response"]
  assert trace.stop_reason == "answer" and trace.answer.startswith("$")
  assert score_official(trace.answer, task.gold) and not score_release(trace.answer, task.gold)
