"""Row sources: JSONL, HF datasets (faked), tfds array_record (a tiny dataset built here)."""

import functools
import json
import pathlib
import pickle
import sys
import types

import grain
import numpy as np
import pytest

from ps_jax.data import processors
from ps_jax.data.rows import Row, RowLimits, parse_row
from ps_jax.data.sources import (
  JsonlSource,
  RowSource,
  decode_tfds_record,
  hf_source,
  tfds_source,
  write_jsonl,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _rows(n):
  return [
    Row(f"q{i}?", f"a{i}", tuple(f"c{i}.{j}" for j in range(i % 3 + 1)), "t", {"i": i})
    for i in range(n)
  ]


def test_write_then_read_jsonl(tmp_path):
  rows = _rows(5)
  path = tmp_path / "sub" / "rows.jsonl"
  assert write_jsonl(rows, path) == 5
  src = JsonlSource(path)
  assert len(src) == 5 and src.stats.valid == 5 and src.stats.num_skipped == 0
  assert [src[i] for i in range(5)] == rows
  assert list(src) == rows and src[-1] == rows[-1]
  with pytest.raises(IndexError):
    src[5]


def test_jsonl_skips_and_counts_bad_lines(tmp_path):
  good = json.dumps({"query": "q", "answer": "a", "contexts": ["c"]})
  lines = [
    good,
    "{not json",
    "",  # blank lines are not rows
    "[1, 2]",
    json.dumps({"query": "q", "answer": "a", "contexts": []}),
    json.dumps({"query": "q", "answer": "a", "contexts": ["c"] * 4}),
    "\u00e9t\u00e9",  # not JSON either
    good,
  ]
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
  src = JsonlSource(path, limits=RowLimits(max_branches=3))
  assert len(src) == 2
  assert dict(src.stats.skipped) == {
    "line:invalid_json": 2,
    "row:wrong_type": 1,
    "contexts:empty": 1,
    "contexts:too_many": 1,
  }
  assert src[1] == Row("q", "a", ("c",))


def test_jsonl_with_processor_and_grain(tmp_path):
  src = JsonlSource(FIXTURES / "tool_calls.jsonl", to_row=processors.tool_trace_to_row)
  assert len(src) == 2 and dict(src.stats.skipped) == {"messages:invalid": 1}
  # Usable as a grain source after a pickle round trip (what grain workers receive).
  ds = grain.MapDataset.source(pickle.loads(pickle.dumps(src))).shuffle(seed=3)
  assert sorted(r.meta["id"] for r in ds) == ["tc_1", "tc_2"]


def test_row_source_over_a_sequence_with_partial_processor():
  records = json.loads((FIXTURES / "hotpotqa_hf.json").read_text())
  to_row = functools.partial(processors.multihop_qa_to_row, distractors=0)
  src = RowSource(records + [{"question": "no context"}], to_row=to_row)
  assert len(src) == 2 and dict(src.stats.skipped) == {"answer:missing": 1}
  assert all(len(r.contexts) == 2 for r in src)


def test_hf_source_without_datasets_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
  with pytest.raises(ImportError, match="pip install datasets"):
    hf_source("hotpot_qa", split="train")


def test_hf_source_with_a_fake_datasets_module(monkeypatch):
  calls = []
  records = [
    {"question": "q?", "gold": "a", "agent_reference_contexts": ["c"]},
    {"question": "bad"},
  ]

  def load_dataset(path, name=None, *, split, **kwargs):
    calls.append((path, name, split, kwargs))
    return records if not kwargs.get("streaming") else iter(records)

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  src = hf_source("org/rows", split="train", name="cfg", revision="abc")
  assert calls == [("org/rows", "cfg", "train", {"revision": "abc"})]
  assert list(src) == [Row("q?", "a", ("c",))] and dict(src.stats.skipped) == {"answer:missing": 1}
  with pytest.raises(TypeError, match="streaming"):
    hf_source("org/rows", split="train", streaming=True)


def test_decode_tfds_record():
  record = {
    "query": b"q?",
    "answer": np.bytes_(b"\xc3\xa9t\xc3\xa9"),
    "contexts": np.array([b"one", b"two"], dtype=object),
    "meta": {"n": np.int64(3), "tags": [b"x"]},
  }
  assert decode_tfds_record(record) == {
    "query": "q?",
    "answer": "\u00e9t\u00e9",
    "contexts": ["one", "two"],
    "meta": {"n": 3, "tags": ["x"]},
  }
  assert parse_row(decode_tfds_record(record)).contexts == ("one", "two")


def test_tfds_data_source_array_record(tmp_path):
  """Builds a 4-row array_record tfds dataset offline (no TensorFlow) and reads it back."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class PsJaxTestRows(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "query": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "contexts": tfds.features.Sequence(tfds.features.Text()),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):  # rows 0 and 3 have no contexts: counted, not returned
        yield i, {"query": f"q{i}?", "answer": f"a{i}", "contexts": [f"c{i}"] * (i % 3)}

  PsJaxTestRows(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  src = tfds_source("ps_jax_test_rows", split="train", data_dir=tmp_path)
  assert len(src) == 2 and dict(src.stats.skipped) == {"contexts:empty": 2}
  assert sorted((r.query, r.answer, r.contexts) for r in src) == [
    ("q1?", "a1", ("c1",)),
    ("q2?", "a2", ("c2", "c2")),
  ]
