"""Loaders on small fixture files in the real schemas, the dispatch, and the worker prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ps_jax.evals import (
  DATASETS,
  EvalExample,
  datasets,
  format_question,
  load_eval_dataset,
  score_choice,
  score_example,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, rows: list[dict]) -> str:
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _rows(name: str) -> list[dict]:
  return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_gsm8k():
  ex = load_eval_dataset("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
  assert [e.gold for e in ex] == ["72", "18000"]
  assert ex[0].kind == "math" and ex[0].question.startswith("Natalia") and ex[0].id == "0"
  assert score_example(ex[1], r"So \boxed{18,000} dollars.") == 1.0


@pytest.mark.parametrize(
  "name, ids, golds",
  [
    ("aime2024", ["2024-I-1", "2024-II-4"], ["204", "33"]),
    ("aime2025", ["0", "1"], ["70", "588"]),
  ],
)
def test_aime(name, ids, golds):
  ex = load_eval_dataset(name, path=str(FIXTURES / f"{name}.jsonl"))
  assert [e.id for e in ex] == ids and [e.gold for e in ex] == golds
  assert all(e.kind == "math" and e.question for e in ex)
  assert score_example(ex[0], rf"\boxed{{{golds[0]}}}") == 1.0


def test_gpqa_diamond_shuffles_deterministically():
  path = str(FIXTURES / "gpqa_diamond.jsonl")
  ex = load_eval_dataset("gpqa_diamond", path=path)
  rows = _rows("gpqa_diamond.jsonl")
  assert len(ex) == 3
  for e, row in zip(ex, rows, strict=True):
    assert e.kind == "choice" and len(e.options) == 4 and e.id == row["Record ID"]
    assert e.options["ABCD".index(e.gold)] == row["Correct Answer"].strip()
    assert sorted(e.options) == sorted(
      row[k].strip()
      for k in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    )
    assert score_example(e, f"The answer is ({e.gold})") == 1.0
  # Same seed: same order, also when loading a subset; another seed: some order changes.
  assert load_eval_dataset("gpqa", path=path) == ex
  assert load_eval_dataset("gpqa", path=path, limit=1) == ex[:1]
  reseeded = [list(datasets.load_gpqa_diamond(path, seed=s)) for s in range(1, 6)]
  assert any(r != ex for r in reseeded)


def test_medqa():
  ex = load_eval_dataset("medqa", path=str(FIXTURES / "medqa.jsonl"))
  assert [e.gold for e in ex] == ["D", "A"]
  assert ex[0].options == ("Ampicillin", "Ceftriaxone", "Doxycycline", "Nitrofurantoin")
  assert score_choice(r"\boxed{D}", ex[0].gold) == 1.0


def test_medqa_options_as_key_value_list(tmp_path):
  row = _rows("medqa.jsonl")[0]
  row["options"] = [{"key": k, "value": v} for k, v in row["options"].items()]
  ex = load_eval_dataset("medqa", path=_write(tmp_path, [row]))
  assert ex[0].options[3] == "Nitrofurantoin" and ex[0].gold == "D"


def test_humanevalplus_canonical_passes():
  ex = load_eval_dataset("humaneval+", path=str(FIXTURES / "humanevalplus.jsonl"))
  assert [e.id for e in ex] == ["HumanEval/0", "HumanEval/2"]
  for e in ex:
    assert e.kind == "code" and e.code_prefix == e.question and e.entry_point
    assert score_example(e, e.gold) == 1.0  # completion style
    assert score_example(e, f"```python\n{e.code_prefix}{e.gold}```") == 1.0  # chat style
    assert score_example(e, "    return None\n") == 0.0


def test_mbppplus_canonical_passes():
  ex = load_eval_dataset("mbpp+", path=str(FIXTURES / "mbppplus.jsonl"))
  assert [e.id for e in ex] == ["2", "3"]
  assert [e.entry_point for e in ex] == ["similar_elements", "is_not_prime"]
  assert ex[1].test.startswith("import math\n")
  for e in ex:
    assert e.kind == "code" and e.code_prefix == ""
    assert score_example(e, f"Sure:\n```python\n{e.gold}\n```") == 1.0
    wrong = f"def {e.entry_point}(*args):\n    return None\n"
    assert score_example(e, wrong) == 0.0


def test_mbpp_without_plus_tests_uses_test_list(tmp_path):
  row = _rows("mbppplus.jsonl")[1]
  del row["test"]
  (e,) = load_eval_dataset("mbppplus", path=_write(tmp_path, [row]))
  assert "assert is_not_prime(37) == False" in e.test
  assert score_example(e, e.gold) == 1.0


def test_gaia():
  ex = load_eval_dataset("gaia", path=str(FIXTURES / "gaia.jsonl"))
  assert [e.gold for e in ex] == ["egalitarian", "34689", "41"]
  assert ex[0].kind == "exact" and ex[0].meta["level"] == 2
  assert score_example(ex[2], "FINAL ANSWER: 41") == 1.0


def test_humaneval_from_package_offline():
  ex = load_eval_dataset("humaneval")
  assert len(ex) == 164 and ex[0].id == "HumanEval/0"
  assert all(e.kind == "code" and "def check" in e.test for e in ex)
  assert len(load_eval_dataset("humaneval", limit=3)) == 3


@pytest.mark.parametrize(
  "fixture, name, field",
  [
    ("gsm8k.jsonl", "gsm8k", "answer"),
    ("gsm8k.jsonl", "gsm8k", "question"),
    ("aime2025.jsonl", "aime2025", "answer"),
    ("gpqa_diamond.jsonl", "gpqa_diamond", "Incorrect Answer 2"),
    ("medqa.jsonl", "medqa", "answer_idx"),
    ("medqa.jsonl", "medqa", "options"),
    ("humanevalplus.jsonl", "humanevalplus", "entry_point"),
    ("mbppplus.jsonl", "mbppplus", "test_list"),
    ("gaia.jsonl", "gaia", "Final answer"),
  ],
)
def test_missing_field_names_field_and_row(tmp_path, fixture, name, field):
  rows = _rows(fixture)
  del rows[1][field]
  with pytest.raises(ValueError, match=rf"row 1: .*{field}"):
    load_eval_dataset(name, path=_write(tmp_path, rows))


@pytest.mark.parametrize(
  "name, change, message",
  [
    ("gsm8k", {"answer": "no final marker"}, "row 0: field 'answer'"),
    ("medqa", {"answer_idx": "E"}, "row 0: field 'answer_idx'"),
    ("medqa", {"options": {"A": "x", "C": "y"}}, "row 0: field 'options'"),
    ("mbppplus", {"test_list": "assert f(1)"}, "row 0: field 'test_list' has type str"),
  ],
)
def test_invalid_field(tmp_path, name, change, message):
  row = {**_rows(f"{name}.jsonl")[0], **change}
  with pytest.raises(ValueError, match=message):
    load_eval_dataset(name, path=_write(tmp_path, [row]))


def test_invalid_json_names_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
    load_eval_dataset("gsm8k", path=str(path))


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="unknown eval dataset 'squad'.*gsm8k.*mbppplus"):
    load_eval_dataset("squad")


def test_hub_without_datasets_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
  with pytest.raises(ImportError, match=r"pip install datasets.*path="):
    load_eval_dataset("gsm8k")


def test_source_strings_read_the_same_examples(tmp_path, monkeypatch):
  """path= takes a source string: jsonl:, hf:json:FILES, a `datasets` folder, hf:DIR:SPLIT."""
  hf = pytest.importorskip("datasets")
  monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  fixture = FIXTURES / "gsm8k.jsonl"
  expected = load_eval_dataset("gsm8k", path=str(fixture))
  saved, splits = tmp_path / "saved", tmp_path / "splits"
  hf.Dataset.from_list(_rows("gsm8k.jsonl")).save_to_disk(str(saved))
  hf.DatasetDict({"test": hf.Dataset.from_list(_rows("gsm8k.jsonl"))}).save_to_disk(str(splits))
  for path in (f"jsonl:{fixture}", f"hf:json:{fixture}", f"hf:{saved}", f"hf:{splits}:test"):
    assert load_eval_dataset("gsm8k", path=path) == expected, path
  assert load_eval_dataset("gsm8k", path=f"hf:{splits}", limit=1) == expected[:1]  # split "test"
  plus = FIXTURES / "humanevalplus.jsonl"  # HumanEval's schema, read through the hf: path
  assert load_eval_dataset("humaneval", path=f"hf:json:{plus}") == load_eval_dataset(
    "humanevalplus", path=str(plus)
  )
  with pytest.raises(ValueError, match="path='synthetic': a synthetic source is not accepted"):
    load_eval_dataset("gsm8k", path="synthetic")


def test_limit_and_gzip(tmp_path):
  import gzip

  path = tmp_path / "gsm8k.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write((FIXTURES / "gsm8k.jsonl").read_text())
  assert [e.gold for e in load_eval_dataset("gsm8k", path=str(path), limit=1)] == ["72"]
  assert load_eval_dataset("gsm8k", path=str(path), limit=0) == []


def test_every_name_dispatches():
  files = {
    "aime2024": "aime2024",
    "aime2025": "aime2025",
    "gpqa_diamond": "gpqa_diamond",
    "gsm8k": "gsm8k",
    "medqa": "medqa",
    "humanevalplus": "humanevalplus",
    "mbppplus": "mbppplus",
    "gaia": "gaia",
  }
  for name in DATASETS:
    path = str(FIXTURES / f"{files[name]}.jsonl") if name in files else None
    ex = load_eval_dataset(name, path=path, limit=2)
    assert len(ex) == 2 and all(isinstance(e, EvalExample) for e in ex)


def test_format_question():
  math = load_eval_dataset("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))[0]
  assert math.question in format_question(math) and "\\boxed{}" in format_question(math)
  choice = load_eval_dataset("medqa", path=str(FIXTURES / "medqa.jsonl"))[0]
  text = format_question(choice)
  assert "D) Nitrofurantoin" in text and "letter" in text
  he = load_eval_dataset("humaneval", limit=1)[0]
  assert he.code_prefix in format_question(he) and "```python" in format_question(he)
  mbpp = load_eval_dataset("mbppplus", path=str(FIXTURES / "mbppplus.jsonl"))[0]
  text = format_question(mbpp)
  assert "similar_elements" in text and "assert set(similar_elements" in text
  gaia = load_eval_dataset("gaia", path=str(FIXTURES / "gaia.jsonl"))[0]
  assert "FINAL ANSWER" in format_question(gaia)


def test_modules_import_without_jax():
  """The evals modules themselves never import jax (the parent package's __init__ may)."""
  code = f"""
import importlib, sys, types
sys.modules["jax"] = None  # any "import jax" now fails
pkg = types.ModuleType("ps_jax")
pkg.__path__ = [{str(REPO / "ps_jax")!r}]
sys.modules["ps_jax"] = pkg  # skip ps_jax/__init__.py
import ps_jax.evals, ps_jax.evals.datasets, ps_jax.evals.scorers, ps_jax.evals.sandbox
assert not any(m == "jax" or m.startswith(("jax.", "flax")) for m in sys.modules if sys.modules[m])
print("ok")
"""
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": str(REPO)},
    timeout=60,
  )
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
