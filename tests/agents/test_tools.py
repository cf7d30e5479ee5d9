"""Agent tools: parse_file per format, the sandboxed python tool (contained and refused), the
replay and BM25 corpus backends (hits and misses counted), the live backend's refusal."""

from __future__ import annotations

import json
import os

import pytest

from ps_jax.agents.tools import (
  BM25,
  CorpusBackend,
  LiveBackend,
  ReplayBackend,
  Tool,
  ToolRegistry,
  default_registry,
  parse_file,
  run_python,
)
from ps_jax.agents.tools.web import tokenize
from ps_jax.evals import sandbox


def _pdf(path, text):
  """A one-page PDF whose content stream shows `text` (Helvetica), written by hand."""
  stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
  objs = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
    b"/Resources << /Font << /F1 5 0 R >> >> >>",
    b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
  ]
  out, offsets = bytearray(b"%PDF-1.4\n"), []
  for i, body in enumerate(objs, 1):
    offsets.append(len(out))
    out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
  xref = len(out)
  out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
  out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
  out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
  path.write_bytes(bytes(out))


@pytest.fixture()
def files(tmp_path):
  import docx  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel

  paths = {}
  paths["txt"] = tmp_path / "notes.txt"
  paths["txt"].write_text("the zebra code is 4417\n")
  paths["csv"] = tmp_path / "sales.csv"
  pd.DataFrame({"region": ["north", "south"], "units": [120, 75]}).to_csv(paths["csv"], index=False)
  paths["json"] = tmp_path / "cfg.json"
  paths["json"].write_text(json.dumps({"owner": {"name": "Ada"}, "port": 8123}))
  paths["xlsx"] = tmp_path / "book.xlsx"
  with pd.ExcelWriter(paths["xlsx"]) as w:
    pd.DataFrame({"item": ["bolt", "nut"], "price": [0.25, 0.1]}).to_excel(
      w, sheet_name="parts", index=False
    )
    pd.DataFrame({"who": ["Kim"]}).to_excel(w, sheet_name="staff", index=False)
  paths["docx"] = tmp_path / "memo.docx"
  d = docx.Document()
  d.add_paragraph("Meeting moved to Thursday.")
  table = d.add_table(rows=1, cols=2)
  table.rows[0].cells[0].text, table.rows[0].cells[1].text = "room", "B12"
  d.save(paths["docx"])
  paths["pdf"] = tmp_path / "report.pdf"
  _pdf(paths["pdf"], "Total revenue 9931 dollars")
  return paths


@pytest.mark.parametrize(
  "fmt,expected",
  [
    ("txt", ["zebra code is 4417"]),
    ("csv", ["region", "north", "120", "south", "75", "[2 rows x 2 columns"]),
    ("json", ['"name": "Ada"', '"port": 8123']),
    ("xlsx", ["## Sheet: parts", "bolt", "0.25", "## Sheet: staff", "Kim"]),
    ("docx", ["Meeting moved to Thursday.", "room | B12"]),
    ("pdf", ["[page 1]", "Total revenue 9931 dollars"]),
  ],
)
def test_parse_file_formats(files, fmt, expected):
  out = parse_file([str(files[fmt])])
  assert out.status == "ok", out.text
  assert out.text.startswith(f"# File: {files[fmt]}")
  for e in expected:
    assert e in out.text, (e, out.text)


def test_parse_file_errors_are_text(files, tmp_path):
  out = parse_file([str(tmp_path / "missing.csv"), str(files["txt"])])
  assert out.status == "ok" and "[error] FileNotFoundError" in out.text and "4417" in out.text
  (tmp_path / "x.bin").write_bytes(b"\0")
  bad = default_registry().call("parse_file", {"files": [str(tmp_path / "x.bin")]})
  assert bad.status == "error" and "unsupported file type .bin" in bad.text


def test_python_tool_runs_contained():
  if sandbox.sandbox_isolation().startswith("refused"):  # fail closed: nothing runs
    refused = run_python("print('ran')")
    assert refused.status == "refused" and "stdout" not in refused.text
    return
  out = run_python("import sys\nprint(sum(range(10)))\nprint('oops', file=sys.stderr)")
  assert out.status == "ok" and out.text == "stdout:\n45"
  err = run_python("print(1)\nraise ValueError('bad input')")
  assert err.status == "error" and "stdout:\n1" in err.text and "ValueError: bad input" in err.text
  # The host's files are not visible inside the sandbox.
  here = os.path.dirname(os.path.abspath(__file__))
  probe = run_python(f"import os\nprint(os.path.exists({here!r}))")
  assert probe.text == "stdout:\nFalse"


def test_python_tool_refuses_without_containment(monkeypatch):
  monkeypatch.setattr(sandbox, "_probe", lambda mode: "simulated: namespaces are forbidden")
  monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
  registry = default_registry(python=True)
  out = registry.call("PythonInterpreter", {"code": "print('ran')"})
  assert out.status == "refused"
  assert "refused" in out.text and "simulated: namespaces are forbidden" in out.text
  assert "ran" not in out.text.replace("print('ran')", "")


def test_replay_hits_and_misses_counted(tmp_path):
  replay = ReplayBackend()
  replay.record("search", {"query": "capital of France"}, "1. Paris\nURL: https://fr.example")
  path = tmp_path / "replay.jsonl"
  replay.save(path)
  loaded = ReplayBackend.from_jsonl(path)
  registry = default_registry(loaded)
  assert registry.names == ["search", "visit", "parse_file"]
  hit = registry.call("search", {"query": "capital of France"})
  assert hit.status == "ok" and hit.text.startswith("1. Paris")
  miss = registry.call("search", {"query": "capital of Spain"})
  assert miss.status == "offline_miss"
  assert miss.text == '[offline] no recorded result for search {"query":"capital of Spain"}'
  registry.call("visit", {"url": "https://fr.example", "goal": "capital"})
  assert (loaded.hits, loaded.misses) == (1, 2)
  # Argument order does not matter: the key is canonical JSON.
  loaded.record("visit", {"url": "u", "goal": "g"}, "page")
  assert loaded("visit", {"goal": "g", "url": "u"}).text == "page"


DOCS = [
  {"url": "https://a.example/eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower in "
   "Paris is 330 metres tall and was completed in 1889 for the World's Fair."},
  {"url": "https://a.example/louvre", "title": "Louvre", "text": "The Louvre museum in Paris "
   "houses the Mona Lisa; it is the most visited museum in the world."},
  {"url": "https://a.example/tower", "title": "Tower of London", "text": "The Tower of London "
   "is a castle on the Thames; the Crown Jewels are kept there."},
  {"url": "https://a.example/bridge", "title": "Tower Bridge", "text": "Tower Bridge crosses "
   "the Thames in London and opened in 1894."},
]  # fmt: skip


def test_bm25_ranks_the_right_document_first():
  corpus = CorpusBackend(DOCS)
  assert corpus.search("how tall is the Eiffel tower")[0]["url"] == "https://a.example/eiffel"
  assert corpus.search("where is the Mona Lisa")[0]["url"] == "https://a.example/louvre"
  assert corpus.search("crown jewels castle")[0]["url"] == "https://a.example/tower"
  assert corpus.search("bridge opened 1894")[0]["url"] == "https://a.example/bridge"
  # BM25 itself: a rarer term outweighs a common one; length normalisation applies.
  bm = BM25([tokenize("paris tower"), tokenize("paris paris museum"), tokenize("london")])
  s = bm.scores(tokenize("museum"))
  assert s[1] > 0 and s[0] == 0 and s[2] == 0


def test_corpus_backend_search_visit_and_misses():
  corpus = CorpusBackend(DOCS)
  registry = default_registry(corpus)
  out = registry.call("search", {"query": ["Eiffel height", "zzzz qqqq"]})
  assert out.status == "ok"
  first, second = out.text.split("\n=======\n")
  assert first.startswith(
    "Results for 'Eiffel height':\n1. Eiffel Tower\nURL: https://a.example/eiffel"
  )
  assert second.startswith("[offline] no document")
  page = registry.call("visit", {"url": "https://a.example/louvre", "goal": "what art"})
  assert page.text.startswith("Goal: what art\nURL: https://a.example/louvre\nThe Louvre")
  gone = registry.call("visit", {"url": "https://nowhere.example"})
  assert gone.status == "offline_miss" and corpus.misses == 2


def test_live_backend_refuses_without_keys(monkeypatch):
  monkeypatch.delenv("SERPER_KEY_ID", raising=False)
  monkeypatch.delenv("PS_JAX_ALLOW_NETWORK", raising=False)
  live = LiveBackend()
  assert live("search", {"query": "x"}).status == "refused"
  assert "SERPER_KEY_ID" in live("search", {"query": "x"}).text
  assert live("visit", {"url": "https://x"}).status == "refused"


def test_registry_takes_an_outside_tool():
  seen = []

  def query_db(sql: str) -> str:
    seen.append(sql)
    return "[(1,)]"

  schema = {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}
  registry = ToolRegistry([Tool("query_db", "Run SQL.", schema, query_db)])
  assert registry.call("query_db", {"sql": "SELECT 1", "extra": 2}).text == "[(1,)]"
  assert seen == ["SELECT 1"]
  assert "'name': 'query_db'" in registry.tools_block()
  with pytest.raises(ValueError, match="already registered"):
    registry.register(Tool("query_db", "again", schema, query_db))
  with pytest.raises(ValueError, match="type 'object'"):
    registry.register(Tool("x", "d", {"type": "string"}, query_db))
