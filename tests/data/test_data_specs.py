"""Source strings (ps_jax.data.sources.parse_source) and the sources they open, on local fixtures:
a tfds dataset built here (array_record), `datasets` folders and local JSON files, read through
ps_jax.experiment.build_rows, the function launch.train uses."""

from __future__ import annotations

import json
import sys

import pytest

from configs import tiny
from ps_jax.data import synthetic
from ps_jax.data.rows import Row
from ps_jax.data.sources import SourceSpec, open_source, parse_source
from ps_jax.experiment import build_rows

# Rows in the reference release's field names (question/gold/agent_reference_contexts) and ours;
# record 2 has no contexts and record 4 no answer: both skipped and counted.
RECORDS = [
  {"question": "Who won?", "gold": "Ann", "agent_reference_contexts": ["Ann won.", "Bo lost."]},
  {"query": "Where?", "answer": "Oslo", "contexts": ["It was in Oslo."]},
  {"query": "When?", "answer": "May", "contexts": []},
  {"query": "How many?", "answer": "3", "contexts": ["Three.", "3 of them.", "Some."]},
  {"query": "Why?", "answer": None, "contexts": ["No reason."]},
]
EXPECTED = [
  ("Who won?", "Ann", ("Ann won.", "Bo lost.")),
  ("Where?", "Oslo", ("It was in Oslo.",)),
  ("How many?", "3", ("Three.", "3 of them.", "Some.")),
]
SKIPPED = {"contexts:empty": 1, "answer:missing": 1}


def _ours(record, missing=None):
  """The record in our field names (one schema: a tfds FeaturesDict, Dataset.from_list)."""
  answer = record.get("answer") or record.get("gold")
  return {
    "query": record.get("query") or record["question"],
    "answer": missing if answer is None else answer,
    "contexts": record.get("contexts") or record.get("agent_reference_contexts") or [],
  }


def _data_config(*sources, tfds_data_dir=""):
  c = tiny.get_config().data
  c.families = ("find_fact",)
  c.train_per_family, c.eval_per_family = 3, 2
  c.sources = sources
  c.tfds_data_dir = tfds_data_dir
  return c


def _triples(rows):
  return [(r.query, r.answer, r.contexts) for r in rows]


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
  "text, expected",
  [
    ("synthetic", SourceSpec("synthetic")),
    (
      "synthetic:find_fact,majority_vote",
      SourceSpec("synthetic", families=("find_fact", "majority_vote")),
    ),
    ("jsonl:data/rows.jsonl", SourceSpec("jsonl", name="data/rows.jsonl")),
    ("data/rows.jsonl", SourceSpec("jsonl", name="data/rows.jsonl")),  # a bare path
    ("tfds:my_rows", SourceSpec("tfds", name="my_rows")),
    ("tfds:my_rows:validation", SourceSpec("tfds", name="my_rows", split="validation")),
    (
      "tfds:my_rows/small:1.0.0:train[:10%]",
      SourceSpec("tfds", name="my_rows/small:1.0.0", split="train[:10%]"),
    ),
    ("hf:org/rows", SourceSpec("hf", name="org/rows")),
    ("hf:org/rows:test[:100]", SourceSpec("hf", name="org/rows", split="test[:100]")),
    (
      "hf:openai/gsm8k:main:test",
      SourceSpec("hf", name="openai/gsm8k", config="main", split="test"),
    ),
    ("hf:openai/gsm8k:main:", SourceSpec("hf", name="openai/gsm8k", config="main")),
    ("hf:json:a.jsonl,b.jsonl", SourceSpec("hf", name="json", data_files="a.jsonl,b.jsonl")),
    (
      "hf:csv:data/*.csv:train",
      SourceSpec("hf", name="csv", data_files="data/*.csv", split="train"),
    ),
  ],
)
def test_parse_source(text, expected):
  assert parse_source(text) == SourceSpec(**{**expected.__dict__, "text": text})


@pytest.mark.parametrize(
  "text, problem",
  [
    ("", "expected a non-empty string"),
    ("s3:bucket/rows", "unknown source kind 's3'"),
    ("rows.csv", "not a source"),
    ("hf:", "nothing after 'hf:'"),
    ("jsonl:", "nothing after 'jsonl:'"),
    ("synthetic:", r"expected FAMILY,\.\.\. after 'synthetic:'"),
    ("hf:org/rows:a:b:c", "too many ':' fields"),
    ("hf:json:", r"expected hf:json:FILES\[:SPLIT\]"),
    ("tfds:rows:train:extra", r"expected tfds:NAME\[:SPLIT\]"),
  ],
)
def test_parse_errors_name_the_field_and_the_accepted_forms(text, problem):
  with pytest.raises(ValueError, match=problem) as err:
    parse_source(text, field="data.sources")
  message = str(err.value)
  assert message.startswith(f"data.sources={text!r}: "), message
  for form in ("synthetic[:FAMILY,...]", "jsonl:PATH", "tfds:NAME[:SPLIT]", "hf:NAME[:SPLIT]"):
    assert form in message, message


def test_a_kind_the_caller_does_not_take_is_refused():
  with pytest.raises(ValueError, match="path='synthetic': a synthetic source is not accepted") as e:
    parse_source("synthetic", field="path", kinds=("jsonl", "hf"))
  assert "synthetic[:" not in str(e.value) and "hf:NAME[:SPLIT]" in str(e.value)


def test_build_rows_checks_every_source_before_reading(tmp_path):
  with pytest.raises(ValueError, match=r"data.sources='hf': nothing after 'hf:'; accepted forms"):
    build_rows(_data_config("synthetic", "hf"))
  with pytest.raises(FileNotFoundError, match=r"data.sources='jsonl:.*nope.jsonl': no such file"):
    build_rows(_data_config("synthetic", f"jsonl:{tmp_path}/nope.jsonl"))
  with pytest.raises(ValueError, match="data.sources is empty"):
    build_rows(_data_config())
  with pytest.raises(ValueError, match="unknown synthetic family 'nope'"):
    build_rows(_data_config("synthetic:nope"))


def test_hf_without_datasets_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
  with pytest.raises(ImportError, match=r"data.sources='hf:org/rows'.*pip install 'ps_jax\[hub\]'"):
    open_source("hf:org/rows", field="data.sources")


# ---------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A prepared tfds dataset `ps_jax_spec_rows` (train: RECORDS, test: the first two) in
  array_record format, built offline (no TensorFlow)."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class PsJaxSpecRows(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {"query": text, "answer": text, "contexts": tfds.features.Sequence(text)}
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        "train": self._generate_examples(RECORDS),
        "test": self._generate_examples(RECORDS[:2]),
      }

    def _generate_examples(self, records):
      for i, record in enumerate(records):
        yield i, _ours(record, missing="")  # a tfds Text feature has no null

  path = tmp_path_factory.mktemp("tfds")
  PsJaxSpecRows(data_dir=str(path), file_format="array_record").download_and_prepare()
  return str(path)


def test_tfds_source_through_build_rows(tfds_dir):
  train, heldout, stats = build_rows(
    _data_config("tfds:ps_jax_spec_rows", "tfds:ps_jax_spec_rows:test", tfds_data_dir=tfds_dir)
  )
  # tfds's array_record order is not the generation order: compare as sets per split.
  assert len(train) == 5 and sorted(_triples(train[:3])) == sorted(EXPECTED)
  assert sorted(_triples(train[3:])) == sorted(EXPECTED[:2])
  # The record without an answer holds "" in tfds: blank, not missing.
  assert dict(stats.skipped) == {"contexts:empty": 1, "answer:empty": 1}
  assert heldout == synthetic.generate("find_fact", "heldout", 2, 0, (3, 4))


# ---------------------------------------------------------------------------- HF datasets


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
  """`datasets` with its cache in tmp_path (hf:json: writes Arrow files there)."""
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  return datasets


def test_hf_sources_through_build_rows(tmp_path, hf_cache):
  datasets = hf_cache
  saved = tmp_path / "saved"
  ours = [_ours(r) for r in RECORDS]  # from_list takes its schema from the first record
  datasets.Dataset.from_list(ours).save_to_disk(str(saved))
  splits = tmp_path / "splits"
  datasets.DatasetDict(
    {"train": datasets.Dataset.from_list(ours[:1]), "test": datasets.Dataset.from_list(ours[1:2])}
  ).save_to_disk(str(splits))
  files = tmp_path / "rows.jsonl"  # both schemas: the json builder takes the union of fields
  files.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
  jsonl = tmp_path / "more.jsonl"
  jsonl.write_text(json.dumps(RECORDS[3]) + "\n")

  train, _, stats = build_rows(
    _data_config(
      "synthetic",
      f"hf:{saved}",
      f"hf:{splits}:test",
      f"hf:json:{files}",
      f"jsonl:{jsonl}",
    )
  )
  suite = synthetic.generate("find_fact", "train", 3, 0, (3, 4))
  assert [train[i] for i in range(3)] == suite
  assert _triples(train[3:]) == EXPECTED + EXPECTED[1:2] + EXPECTED + EXPECTED[2:]
  assert len(train) == 3 + 3 + 1 + 3 + 1
  assert dict(stats.skipped) == {k: 2 * v for k, v in SKIPPED.items()}
  with pytest.raises(
    ValueError, match=r"without split 'validation'; its splits: \['test', 'train'\]"
  ):
    build_rows(_data_config(f"hf:{splits}:validation"))


def test_hf_rows_pickle_for_grain_workers(tmp_path, hf_cache):
  import pickle  # pylint: disable=import-outside-toplevel

  hf_cache.Dataset.from_list([_ours(r) for r in RECORDS]).save_to_disk(str(tmp_path / "saved"))
  train, _, _ = build_rows(_data_config(f"hf:{tmp_path / 'saved'}"))
  copy = pickle.loads(pickle.dumps(train))
  assert [copy[i] for i in range(len(copy))] == [Row(*t) for t in EXPECTED]


def test_build_rows_adds_eval_only_families_and_checks_for_leaks(tmp_path):
  c = _data_config("synthetic")
  c.eval_families = ("consensus_vote",)
  rows = build_rows(c)
  train, heldout, _ = rows
  unseen = [r for r in heldout if r.meta["family"] == "consensus_vote"]
  assert len(unseen) == c.eval_per_family == len(heldout) - len(unseen)
  assert {r.meta["generalization"] for r in unseen} == {"unseen_family"}
  assert not any(r.meta["family"] == "consensus_vote" for r in train)
  assert rows.leak["ok"] and rows.leak["heldout_rows"] == len(heldout)
  assert (rows.train, rows.heldout, rows.stats) == tuple(rows)

  # A training source that holds a held-out row: reported, not hidden.
  path = tmp_path / "leaky.jsonl"
  path.write_text(json.dumps(heldout[0].to_dict()) + "\n")
  c.sources = ("synthetic", f"jsonl:{path}")
  leak = build_rows(c).leak
  assert not leak["ok"] and leak["pairs_in_train"] == 1

  c.eval_families = ("find_fact",)
  with pytest.raises(ValueError, match="not an evaluation-only family"):
    build_rows(c)
