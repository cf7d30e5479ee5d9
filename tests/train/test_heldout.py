"""ps_jax.train.heldout with a fake synthesizer (no model): scoring, Wilson intervals on known
counts, per-example scores and paired tests, adapters per method, and the report files."""

import dataclasses
import json
import math

import matplotlib.image
import pytest

from ps_jax.data import synthetic
from ps_jax.evals.stats import wilson_interval
from ps_jax.train import heldout

METHODS = ("text", "pcw", "parallel_synthesis")
# Hand-computed Wilson 95% intervals (z = 1.96): k of n -> (low, high).
WILSON = {(10, 10): (0.7225, 1.0), (5, 10): (0.2366, 0.7634), (8, 10): (0.4902, 0.9433)}


@dataclasses.dataclass
class FakeResult:
  texts: list
  ttft_s: float


class FakeSynth:
  """Stands in for synthesize/encode_branches; answers by method and row (query + branches)."""

  def __init__(self, rows):
    self.rows = {(r.query, tuple(r.contexts)): r for r in rows}
    self.encoded = []  # the contexts of each encoded batch
    self.adapters = {}  # method -> the adapters it was given

  def encode_branches(self, model, tokenizer, examples, prefixes=None):
    assert prefixes is None  # the default branch_layout="fixed"
    assert model == "model" and tokenizer == "tok"
    self.encoded.append(examples)
    return examples

  def synthesize(self, model, tokenizer, branches, questions, *, method, adapter, **kw):
    assert len(branches) == len(questions) and kw["max_new_tokens"] == 32
    self.adapters.setdefault(method, set()).add(adapter)
    texts = [self.answer(method, q, b) for q, b in zip(questions, branches, strict=True)]
    return FakeResult(texts, METHOD_TTFT[method])

  def answer(self, method, query, contexts):
    row = self.rows[query, tuple(contexts)]
    index = int(row.meta["index"])
    if method == "parallel_synthesis":
      return row.answer
    if method == "pcw":  # right, then a trailing "Answer:" line (the old extractor missed it)
      return f"The answer is: {row.answer}.\n\nAnswer:" if index < 8 else "I do not know."
    return row.answer if index % 2 == 0 else "Your locker is a banana."  # text: every other


METHOD_TTFT = {"text": 0.3, "pcw": 0.1, "parallel_synthesis": 0.12}
FAMILIES = ("find_fact", "majority_vote", "consensus_vote")  # two seen families, one unseen


@pytest.fixture(scope="module")
def rows():
  out = []
  for fam in FAMILIES:
    for i, r in enumerate(synthetic.generate(fam, "heldout", 10, 0, 3)):
      out.append(dataclasses.replace(r, meta={**r.meta, "index": i}))
  return out


def _scorer(row, text):
  return synthetic.score(row.meta["family"], text, row.answer)


@pytest.fixture(scope="module")
def evaluated(rows):
  fake = FakeSynth(rows)
  mp = pytest.MonkeyPatch()
  mp.setattr(heldout, "synthesize", fake.synthesize)
  mp.setattr(heldout, "encode_branches", fake.encode_branches)
  try:
    results = heldout.evaluate_methods(
      "model",
      "tok",
      rows,
      scorer=_scorer,
      methods=METHODS,
      adapter="ADAPTER",
      max_new_tokens=32,
      batch_size=4,
      group=lambda r: r.meta["family"],
      samples_per_group=2,
    )
  finally:
    mp.undo()
  return fake, results


def test_every_method_reads_the_same_encoded_batches(rows, evaluated):
  fake, results = evaluated
  assert len(fake.encoded) == math.ceil(len(rows) / 4)
  assert [c for batch in fake.encoded for c in batch] == [list(r.contexts) for r in rows]
  # One adapter: every method but text gets it (text runs the bare base model).
  assert fake.adapters == {"text": {None}, "pcw": {"ADAPTER"}, "parallel_synthesis": {"ADAPTER"}}
  assert results["ttft_median_s"] == METHOD_TTFT
  assert results["ttft_spread_s"]["pcw"] == [0.1, 0.1]
  assert results["num_examples"] == 30 and results["batch_size"] == 4
  assert results["max_new_tokens"] == 32


def test_accuracy_and_wilson_intervals_on_known_counts(evaluated):
  _, results = evaluated
  # Per group of 10: PS 10/10, pcw 8/10 (the trailing-"Answer:" outputs count), text 5/10.
  expect = {"parallel_synthesis": (10, 10), "pcw": (8, 10), "text": (5, 10)}
  assert results["group_sizes"] == dict.fromkeys(sorted(FAMILIES), 10)
  for m, (k, n) in expect.items():
    for fam in FAMILIES:
      assert results["per_group"][m][fam] == k / n
      assert results["per_group_ci95"][m][fam] == pytest.approx(WILSON[k, n], abs=1e-4)
    # Equal group sizes: the mean over groups is the pooled accuracy, its interval on n = 30.
    assert results["accuracy"][m] == pytest.approx(k / n)
    assert results["accuracy_ci95"][m] == pytest.approx(list(wilson_interval(3 * k, 3 * n)))
  assert results["accuracy_ci95"]["text"] == pytest.approx([0.3315, 0.6685], abs=1e-4)


def test_per_kind_means_separate_unseen_families(evaluated):
  _, results = evaluated
  assert results["kind_sizes"] == {"new_template": 20, "unseen_family": 10}
  assert results["per_kind"]["pcw"] == {"new_template": 0.8, "unseen_family": 0.8}
  assert results["per_kind_ci95"]["text"]["unseen_family"] == pytest.approx(WILSON[5, 10], abs=1e-4)
  assert results["per_kind_ci95"]["text"]["new_template"] == pytest.approx(
    list(wilson_interval(10, 20))
  )


def test_per_example_scores_and_paired_tests(rows, evaluated):
  _, results = evaluated
  per = results["per_example"]
  assert per["ids"] == heldout.example_ids(rows) and len(set(per["ids"])) == 30
  assert per["groups"] == [r.meta["family"] for r in rows]
  assert per["kinds"] == [r.meta["generalization"] for r in rows]
  assert per["scores"]["parallel_synthesis"] == [1.0] * 30
  assert per["scores"]["text"] == [float(r.meta["index"] % 2 == 0) for r in rows]
  assert per["outputs"]["pcw"][0].endswith("\n\nAnswer:")
  assert [(t["a"], t["b"]) for t in results["paired"]] == [
    ("text", "pcw"),
    ("text", "parallel_synthesis"),
    ("pcw", "parallel_synthesis"),
  ]
  ps_text = results["paired"][1]
  assert ps_text["diff"] == pytest.approx(-0.5) and ps_text["n_examples"] == 30
  assert ps_text["p_value"] < 0.01 and ps_text["significant"] and ps_text["ci95"][1] < 0
  # The same test, re-run from the stored per-example scores (pairing by id).
  again = heldout.paired_tests(results, [("parallel_synthesis", "text")])[0]
  assert again["diff"] == pytest.approx(0.5) and again["p_value"] == ps_text["p_value"]


def test_samples_per_group(evaluated):
  _, results = evaluated
  samples = results["samples"]
  assert [s["group"] for s in samples] == [f for f in FAMILIES for _ in range(2)]
  assert set(samples[0]) == {"id", "group", "query", "answer", *METHODS}


def test_adapter_per_method(rows, monkeypatch):
  fake = FakeSynth(rows)
  monkeypatch.setattr(heldout, "synthesize", fake.synthesize)
  monkeypatch.setattr(heldout, "encode_branches", fake.encode_branches)
  results = heldout.evaluate_methods(
    "model",
    "tok",
    rows[:5],
    scorer=_scorer,
    methods=("text", "parallel_synthesis"),
    adapter={"text": "TEXT_LORA", "parallel_synthesis": "PS"},
    max_new_tokens=32,
    kind=None,
    keep_outputs=False,
    bootstrap_resamples=100,
  )
  assert fake.adapters == {"text": {"TEXT_LORA"}, "parallel_synthesis": {"PS"}}
  assert "per_kind" not in results and "outputs" not in results["per_example"]
  assert results["paired"][0]["n_resamples"] == 100
  assert set(results["per_group"]["text"]) == {"synthetic/find_fact"}  # group: the source


def test_example_ids_are_stable_and_unique():
  r = synthetic.generate("find_fact", "heldout", 2, 0, 3)
  ids = heldout.example_ids([r[0], r[1], r[0]])
  assert ids[2] == ids[0] + "#2" and len(set(ids)) == 3
  assert heldout.example_ids(synthetic.generate("find_fact", "heldout", 2, 0, 3)) == ids[:2]


def test_write_report(evaluated, tmp_path):
  _, results = evaluated
  paths = heldout.write_report(
    results, str(tmp_path / "out"), name="r", title="T", extra={"model": "fake", "cfg": {"a": 1}}
  )
  assert set(paths) == {"json", "md", "png"}
  saved = json.load(open(paths["json"]))
  for key in (
    "accuracy",
    "accuracy_ci95",
    "per_group",
    "per_group_ci95",
    "group_sizes",
    "per_kind",
    "per_kind_ci95",
    "kind_sizes",
    "paired",
    "per_example",
    "samples",
    "ttft_median_s",
  ):
    assert key in saved, key
  assert saved["model"] == "fake" and saved["cfg"] == {"a": 1}
  assert saved["per_example"]["scores"]["text"] == results["per_example"]["scores"]["text"]
  md = open(paths["md"]).read()
  assert md.startswith("# T\n") and "- model: fake" in md and "cfg" not in md
  assert "| group | n | text | pcw | parallel_synthesis |" in md
  assert (
    "| consensus_vote | 10 | 50.0 [23.7, 76.3] | 80.0 [49.0, 94.3] | 100.0 [72.2, 100.0] |" in md
  )
  assert "| *mean: unseen_family* | 10 |" in md and "| *mean: new_template* | 20 |" in md
  assert "| **mean over groups** | 30 | **50.0 [33.2, 66.8]** |" in md
  assert "| parallel_synthesis - text |" not in md  # pairs in method order
  assert "| text - parallel_synthesis | -50.0 |" in md and "| yes |" in md
  assert "| pcw | 100.0 | 100.0-100.0 |" in md
  image = matplotlib.image.imread(paths["png"])
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_write_report_without_intervals(tmp_path):
  """Results of the former format (no intervals, no paired tests) still render."""
  old = {
    "accuracy": {"text": 0.5},
    "per_group": {"text": {"a": 0.5}},
    "ttft_median_s": {"text": 0.1},
    "ttft_spread_s": {"text": [0.1, 0.2]},
    "num_examples": 2,
    "batch_size": 2,
  }
  paths = heldout.write_report(old, str(tmp_path), name="old")
  assert "| a |  | 50.0 |" in open(paths["md"]).read()


def test_unknown_branch_layout_is_refused(rows):
  with pytest.raises(ValueError, match=r"branch_layout='nope'; expected one of \('fixed'"):
    heldout.evaluate_methods(
      "model", "tok", rows, scorer=_scorer, methods=METHODS, adapter=None, branch_layout="nope"
    )
