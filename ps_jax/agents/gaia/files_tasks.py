"""gaia-files: an offline task set in GAIA's format, generated at run time (research note 4.1).

Each task writes its attachments into `out_dir` (csv, xlsx, json, docx, txt, pdf) and asks a
question answerable from them with `parse_file` and, for the arithmetic, `PythonInterpreter`.
The gold answer is computed from the generator's own in-memory rows, not from the files, so a
file that does not say what the generator meant is caught by the tests, which recompute every
answer from the written files.

Task i has kind KINDS[i % len(KINDS)] and its own generator seeded by (seed, i): the set is
deterministic in `seed`, and the first n tasks do not depend on `num_tasks`. Numbers are kept
exact (integers, integer cents), so no gold depends on float rounding. Level 1: one file, one
filter and one aggregate; level 2: a join across two files or sheets, or numbers printed with
currency formatting.
"""

from __future__ import annotations

import csv
import datetime
import json
import pathlib
import random
from collections.abc import Callable

from ps_jax.agents.gaia.data import GaiaTask

__all__ = ["KINDS", "gaia_files_tasks", "write_pdf"]

REGIONS = ("North", "South", "East", "West", "Central")
PRODUCTS = ("Widget", "Gadget", "Sprocket", "Gizmo", "Bracket", "Valve", "Gear", "Hinge")
FIRST = ("Ada", "Boris", "Chen", "Dalia", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal")
LAST = ("Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Sato", "Tanaka", "Ueda", "Varga", "Weber")
DEPARTMENTS = ("Sales", "Engineering", "Finance", "Support", "Marketing")
SUBJECTS = ("Algebra", "Biology", "Chemistry", "History", "Literature", "Physics")
CATALOGUE = {
  "Hardware": ("hammer", "wrench", "pliers", "chisel", "saw", "drill", "level", "clamp"),
  "Stationery": ("stapler", "binder", "marker", "eraser", "ruler", "notebook", "folder", "tape"),
  "Kitchen": ("kettle", "whisk", "ladle", "colander", "grater", "peeler", "skillet", "tongs"),
}
MILESTONES = (
  "Kick-off meeting",
  "Requirements signed off",
  "Prototype demo",
  "Security audit",
  "Beta release",
  "Budget review",
  "Final delivery",
  "Launch party",
)
SECTIONS = ("Background", "Method", "Results", "Discussion", "Budget", "Timeline", "Risks")
WORDS = (
  "the team measured river flow at four stations during spring and compared it with rainfall "
  "records from nearby farms while volunteers sampled water quality every week to check "
  "sediment nitrate and oxygen levels before the summer drought reduced the flow"
).split()
SERVICES = ("auth", "billing", "search", "storage", "gateway")
CLIENTS = ("Acme Corp", "Globex", "Initech", "Umbrella Ltd", "Stark Industries", "Hooli")


def _cents(c: int) -> str:
  """Integer cents as a plain decimal with two places ("1234.50")."""
  return f"{c // 100}.{c % 100:02d}"


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _write_xlsx(path: pathlib.Path, sheets: dict[str, tuple[list[str], list[list]]]) -> None:
  import openpyxl  # pylint: disable=import-outside-toplevel

  wb = openpyxl.Workbook()
  wb.remove(wb.active)
  for name, (header, rows) in sheets.items():
    ws = wb.create_sheet(name)
    ws.append(header)
    for row in rows:
      ws.append(row)
  wb.save(path)


def write_pdf(path: str | pathlib.Path, lines: list[str]) -> None:
  """A one-page PDF of ASCII text lines in Helvetica, written by hand (no PDF library needed;
  pypdf reads it back). At most 50 lines of at most 100 characters."""
  if len(lines) > 50 or any(len(s) > 100 or not s.isascii() for s in lines):
    raise ValueError("write_pdf takes at most 50 ASCII lines of at most 100 characters")
  esc = [s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for s in lines]
  body = "BT /F1 10 Tf 14 TL 50 760 Td " + " T* ".join(f"({s}) Tj" for s in esc) + " ET"
  objs = [
    "<< /Type /Catalog /Pages 2 0 R >>",
    "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
    "/Resources << /Font << /F1 5 0 R >> >> >>",
    f"<< /Length {len(body)} >>\nstream\n{body}\nendstream",
    "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
  ]
  out, offsets = "%PDF-1.4\n", []
  for n, obj in enumerate(objs, 1):
    offsets.append(len(out))
    out += f"{n} 0 obj\n{obj}\nendobj\n"
  xref = len(out)
  out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n"
  out += "".join(f"{o:010d} 00000 n \n" for o in offsets)
  out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
  pathlib.Path(path).write_bytes(out.encode("ascii"))


# ------------------------------------------------------------------------------- task kinds
# Each maker: (rng, out_dir, task_id) -> GaiaTask; the gold comes from the rows in memory.

Maker = Callable[[random.Random, pathlib.Path, str], GaiaTask]


def _csv_sum(rng, out, tid):
  start = datetime.date(2023, 1, 2)
  rows = [
    [
      (start + datetime.timedelta(days=3 * k)).isoformat(),
      rng.choice(REGIONS),
      rng.choice(PRODUCTS),
      rng.randint(1, 50),
      _cents(rng.randint(150, 9_999)),
    ]
    for k in range(rng.randint(25, 45))
  ]
  region = rng.choice(sorted({r[1] for r in rows}))
  path = out / f"{tid}.csv"
  _write_csv(path, ["date", "region", "product", "units", "unit_price"], rows)
  gold = sum(r[3] for r in rows if r[1] == region)
  q = (
    "The attached CSV file lists sales records, one row per sale. What is the total number "
    f"of units sold in the {region} region? Answer with a number only."
  )
  return GaiaTask(tid, q, str(gold), 1, (path,))


def _csv_mean(rng, out, tid):
  subject = rng.choice(SUBJECTS)
  k = rng.choice((4, 5, 10))  # 100 / k is an integer, so the mean has at most 2 decimals
  counts = {s: (k if s == subject else rng.randint(3, 8)) for s in SUBJECTS}
  rows = [
    [f"{rng.choice(FIRST)} {rng.choice(LAST)}", s, rng.randint(40, 100)]
    for s, c in counts.items()
    for _ in range(c)
  ]
  rng.shuffle(rows)
  path = out / f"{tid}.csv"
  _write_csv(path, ["student", "subject", "score"], rows)
  total = sum(r[2] for r in rows if r[1] == subject)
  q = (
    f"The attached CSV file lists exam scores. What is the mean score in {subject}? Give it "
    "rounded to two decimal places."
  )
  return GaiaTask(tid, q, _cents(total * 100 // k), 1, (path,))


def _xlsx_max(rng, out, tid):
  names = rng.sample([f"{f} {s}" for f in FIRST for s in LAST], rng.randint(15, 25))
  salaries = rng.sample(range(40, 160), len(names))  # distinct, so the maximum is unique
  rows = [[n, rng.choice(DEPARTMENTS), s * 1000] for n, s in zip(names, salaries, strict=True)]
  dept = rng.choice(sorted({r[1] for r in rows if sum(x[1] == r[1] for x in rows) >= 2}))
  path = out / f"{tid}.xlsx"
  _write_xlsx(path, {"Staff": (["Name", "Department", "Salary"], rows)})
  gold = max((r for r in rows if r[1] == dept), key=lambda r: r[2])[0]
  q = (
    f"The attached spreadsheet lists staff. Which employee in the {dept} department has the "
    "highest salary? Answer with the full name."
  )
  return GaiaTask(tid, q, gold, 1, (path,))


def _inventory(rng, min_low: int):
  """(category, rows [item, category, stock, reorder]) with at least `min_low` items of that
  category below their reorder level and at least one not below."""
  category = rng.choice(sorted(CATALOGUE))
  while True:
    rows = [
      [item, cat, rng.randint(0, 60), rng.randint(5, 30)]
      for cat in sorted(CATALOGUE)
      for item in rng.sample(CATALOGUE[cat], rng.randint(5, 8))
    ]
    low = [r for r in rows if r[1] == category and r[2] < r[3]]
    if min_low <= len(low) < sum(r[1] == category for r in rows):
      rng.shuffle(rows)
      return category, rows


def _xlsx_count(rng, out, tid):
  category, rows = _inventory(rng, min_low=1)
  path = out / f"{tid}.xlsx"
  _write_xlsx(path, {"Inventory": (["Item", "Category", "Stock", "Reorder level"], rows)})
  gold = sum(1 for r in rows if r[1] == category and r[2] < r[3])
  q = (
    f"The attached spreadsheet is a shop inventory. How many items in the {category} category "
    "have a stock below their reorder level? Answer with a number only."
  )
  return GaiaTask(tid, q, str(gold), 1, (path,))


def _xlsx_list(rng, out, tid):
  category, rows = _inventory(rng, min_low=2)
  stock = [[r[0], r[2]] for r in rows]
  rng.shuffle(stock)  # the two sheets are in different orders: a join, not a side-by-side read
  path = out / f"{tid}.xlsx"
  _write_xlsx(
    path,
    {
      "Catalogue": (["Item", "Category", "Reorder level"], [[r[0], r[1], r[3]] for r in rows]),
      "Stock": (["Item", "Stock"], stock),
    },
  )
  gold = ", ".join(sorted(r[0] for r in rows if r[1] == category and r[2] < r[3]))
  q = (
    "The attached workbook has a Catalogue sheet and a Stock sheet. List the items of the "
    f"{category} category whose stock is below their reorder level, in alphabetical order, "
    "separated by commas."
  )
  return GaiaTask(tid, q, gold, 2, (path,))


def _json_csv_join(rng, out, tid):
  names = rng.sample(PRODUCTS, rng.randint(4, 7))
  skus = rng.sample(range(1000, 9999), len(names))
  price = {f"P-{s}": rng.randint(199, 4_999) for s in skus}  # integer cents
  catalogue = [
    {"sku": f"P-{s}", "name": n, "unit_price": price[f"P-{s}"] / 100}
    for s, n in zip(skus, names, strict=True)
  ]
  orders = [
    [f"O-{10_000 + k}", rng.choice(sorted(price)), rng.randint(1, 12)]
    for k in range(rng.randint(20, 35))
  ]
  target = rng.choice(sorted({o[1] for o in orders}))
  name = next(p["name"] for p in catalogue if p["sku"] == target)
  jpath, cpath = out / f"{tid}_catalogue.json", out / f"{tid}_orders.csv"
  jpath.write_text(json.dumps({"currency": "USD", "products": catalogue}, indent=2) + "\n")
  _write_csv(cpath, ["order_id", "sku", "quantity"], orders)
  cents = price[target] * sum(o[2] for o in orders if o[1] == target)
  q = (
    "The attached JSON catalogue gives each product's unit price in US dollars, and the "
    "attached CSV lists orders by SKU. What is the total revenue from orders of the product "
    f"named {name}, in dollars? Answer with the number only, with two decimals."
  )
  return GaiaTask(tid, q, _cents(cents), 2, (jpath, cpath))


def _txt_date_diff(rng, out, tid):
  names = rng.sample(MILESTONES, 6)
  base = datetime.date(2022, 1, 1)
  dates = sorted(base + datetime.timedelta(days=d) for d in rng.sample(range(900), len(names)))
  a, b = sorted(rng.sample(range(len(names)), 2))
  path = out / f"{tid}.txt"
  lines = [f"{d.isoformat()}  {n}" for d, n in zip(dates, names, strict=True)]
  path.write_text("Project milestones (date, milestone)\n" + "\n".join(lines) + "\n")
  q = (
    "The attached project log lists milestones with their dates. How many days passed between "
    f"the '{names[a]}' milestone and the '{names[b]}' milestone?"
  )
  return GaiaTask(tid, q, str((dates[b] - dates[a]).days), 1, (path,))


def _docx_words(rng, out, tid):
  import docx  # pylint: disable=import-outside-toplevel

  headings = rng.sample(SECTIONS, rng.randint(4, 6))
  bodies = []
  for _ in headings:
    words = [rng.choice(WORDS) for _ in range(rng.randint(18, 60))]
    bodies.append(" ".join([words[0].capitalize(), *words[1:]]) + ".")
  doc = docx.Document()
  doc.add_heading("Field study report", level=0)
  for h, body in zip(headings, bodies, strict=True):
    doc.add_heading(h, level=1)
    doc.add_paragraph(body)
  path = out / f"{tid}.docx"
  doc.save(path)
  i = rng.randrange(len(headings))
  q = (
    "In the attached document, how many words does the paragraph under the heading "
    f"'{headings[i]}' contain? Count whitespace-separated words."
  )
  return GaiaTask(tid, q, str(len(bodies[i].split())), 1, (path,))


def _txt_log_count(rng, out, tid):
  service = rng.choice(SERVICES)
  entries = []
  while not any(e[1] == "ERROR" and e[2] == service for e in entries):
    entries = [
      (
        datetime.datetime(2024, 5, 1) + datetime.timedelta(seconds=rng.randint(0, 86_400 * 7)),
        rng.choice(("INFO", "INFO", "WARN", "ERROR")),
        rng.choice(SERVICES),
        rng.choice(("request done", "retrying", "timeout", "cache miss", "bad token")),
      )
      for _ in range(rng.randint(40, 70))
    ]
  entries.sort()
  path = out / f"{tid}.log"
  path.write_text("".join(f"{t.isoformat()} {lv} {s}: {m}\n" for t, lv, s, m in entries))
  gold = sum(1 for e in entries if e[1] == "ERROR" and e[2] == service)
  q = (
    "The attached server log has one entry per line (time, level, service, message). How many "
    f"ERROR entries from the {service} service does it contain?"
  )
  return GaiaTask(tid, q, str(gold), 1, (path,))


def _pdf_invoices(rng, out, tid):
  rows = [
    (f"INV-{2000 + k}", rng.choice(CLIENTS), rng.randint(5_000, 950_000))
    for k in range(rng.randint(18, 32))
  ]
  client = rng.choice(sorted({r[1] for r in rows}))
  lines = ["Invoice register, 2024", ""] + [
    f"{n} | Client: {c} | Amount: ${a // 100:,}.{a % 100:02d}" for n, c, a in rows
  ]
  path = out / f"{tid}.pdf"
  write_pdf(path, lines)
  q = (
    "The attached PDF is an invoice register. What is the total amount invoiced to "
    f"{client}, in dollars? Answer with the number only, with two decimals."
  )
  return GaiaTask(tid, q, _cents(sum(a for _, c, a in rows if c == client)), 2, (path,))


_MAKERS: dict[str, Maker] = {
  "csv_sum": _csv_sum,
  "csv_mean": _csv_mean,
  "xlsx_max": _xlsx_max,
  "xlsx_count": _xlsx_count,
  "xlsx_list": _xlsx_list,
  "json_csv_join": _json_csv_join,
  "txt_date_diff": _txt_date_diff,
  "docx_words": _docx_words,
  "txt_log_count": _txt_log_count,
  "pdf_invoices": _pdf_invoices,
}
KINDS = tuple(_MAKERS)


def gaia_files_tasks(out_dir: str | pathlib.Path, num_tasks: int, seed: int) -> list[GaiaTask]:
  """`num_tasks` tasks with their attachments written into `out_dir` (created if needed;
  files of the same names are overwritten). Task ids are `gf-<seed>-<i>-<kind>`."""
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
  if not isinstance(seed, int):
    raise TypeError(f"seed must be an int, got {type(seed).__name__}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tasks = []
  for i in range(num_tasks):
    kind = KINDS[i % len(KINDS)]
    rng = random.Random(f"gaia-files:{seed}:{i}")  # str seeds hash stably across runs
    tasks.append(_MAKERS[kind](rng, out, f"gf-{seed}-{i:04d}-{kind}"))
  return tasks
