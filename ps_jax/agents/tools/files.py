"""`parse_file`: local attachments to text by extension (release limits: 10 files, 30,000
characters per file, csv 200 rows x 80 columns, xlsx 8 sheets x 120 rows, pdf 80 pages).

Parsers: pandas (csv/tsv/xlsx, xlsx through openpyxl), python-docx, pypdf; they are imported
only when a file of their format is parsed (install them with the `agents` extra).
"""

from __future__ import annotations

import json
import os
import re

from ps_jax.agents.tools.registry import Tool, ToolOutput

MAX_FILES = 10
MAX_CHARS = int(os.environ.get("PARSE_FILE_MAX_CHARS", "30000"))
CSV_ROWS, CSV_COLS = 200, 80
XLSX_SHEETS, XLSX_ROWS = 8, 120
PDF_PAGES = 80
TEXT_EXTS = {".txt", ".md", ".py", ".jsonl", ".yaml", ".yml", ".ini", ".cfg", ".log", ".xml"}

DESCRIPTION = (
  "Parse local files (txt, md, csv, tsv, json, xlsx, docx, pdf, html, ...) and return their "
  "text content. Use it for the attached files listed in the question."
)
PARAMETERS = {
  "type": "object",
  "properties": {
    "files": {
      "type": "array",
      "items": {"type": "string"},
      "description": "Local file paths to parse (at most 10).",
    }
  },
  "required": ["files"],
}


def _clip(text: str) -> str:
  return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f"\n...[clipped at {MAX_CHARS}]"


def _table(df, rows: int) -> str:
  import pandas as pd  # pylint: disable=import-outside-toplevel

  note = f"\n[{len(df)} rows x {df.shape[1]} columns; showing at most {rows} rows]"
  with pd.option_context("display.max_columns", CSV_COLS, "display.width", 10_000):
    return df.iloc[:rows, :CSV_COLS].to_string(index=False) + note


def parse_one(path: str) -> str:
  """Text of one file; raises on unreadable input (the registry turns that into text)."""
  ext = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file: {path}")
  if ext in TEXT_EXTS:
    with open(path, encoding="utf-8", errors="replace") as f:
      return f.read()
  if ext == ".json":
    with open(path, encoding="utf-8") as f:
      return json.dumps(json.load(f), indent=2, ensure_ascii=False)
  if ext in (".csv", ".tsv"):
    import pandas as pd  # pylint: disable=import-outside-toplevel

    return _table(pd.read_csv(path, sep="\t" if ext == ".tsv" else ","), CSV_ROWS)
  if ext in (".xlsx", ".xlsm", ".xls"):
    import pandas as pd  # pylint: disable=import-outside-toplevel

    sheets = pd.read_excel(path, sheet_name=None)
    parts = [
      f"## Sheet: {name}\n{_table(df, XLSX_ROWS)}"
      for name, df in list(sheets.items())[:XLSX_SHEETS]
    ]
    return "\n\n".join(parts)
  if ext == ".docx":
    import docx  # pylint: disable=import-outside-toplevel

    doc = docx.Document(path)
    parts = [p.text for p in doc.paragraphs]
    for table in doc.tables:
      parts.extend(" | ".join(c.text for c in row.cells) for row in table.rows)
    return "\n".join(parts)
  if ext == ".pdf":
    import pypdf  # pylint: disable=import-outside-toplevel

    reader = pypdf.PdfReader(path)
    pages = [p.extract_text() or "" for p in reader.pages[:PDF_PAGES]]
    return "\n\n".join(f"[page {i + 1}]\n{t}" for i, t in enumerate(pages))
  if ext in (".html", ".htm"):
    with open(path, encoding="utf-8", errors="replace") as f:
      html = f.read()
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)  # the release's regex misses these
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()
  raise ValueError(f"unsupported file type {ext or '(none)'}: {path}")


def parse_file(files) -> ToolOutput:
  """The tool: every file's text under a header; a failing file reports its error inline."""
  if isinstance(files, str):
    files = [files]
  if not isinstance(files, list) or not files:
    return ToolOutput("parse_file needs a non-empty list of file paths", "bad_arguments")
  parts, failed = [], 0
  for path in files[:MAX_FILES]:
    try:
      body = _clip(parse_one(str(path)))
    except Exception as e:  # pylint: disable=broad-except  # reported to the model as text
      body, failed = f"[error] {type(e).__name__}: {e}", failed + 1
    parts.append(f"# File: {path}\n{body}")
  if len(files) > MAX_FILES:
    parts.append(f"[only the first {MAX_FILES} of {len(files)} files were parsed]")
  return ToolOutput("\n\n".join(parts), "error" if failed == len(parts) else "ok")


def parse_file_tool() -> Tool:
  return Tool("parse_file", DESCRIPTION, PARAMETERS, parse_file)
