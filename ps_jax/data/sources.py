"""Row sources: local JSONL, Hugging Face ``datasets``, and ``tfds.data_source`` (array_record).

Every source is random access (``__len__`` + ``__getitem__`` returning a :class:`Row`), so
it can be handed to ``grain.MapDataset.source`` and shuffled, sharded and resumed by index.
To keep indices dense and lengths exact, a source scans its records once at construction:
malformed records are left out of the index and counted in ``source.stats`` (the scan costs
one read of the data; rows are converted again, cheaply, on each access).

Sources pickle cleanly (grain workers receive a copy): the JSONL source keeps only the path
and line offsets and reopens the file on each access.

Configs name a source by one string, parsed here and nowhere else (`parse_source`):

  synthetic[:FAMILY,...]           the synthetic suite (ps_jax.data.synthetic)
  jsonl:PATH                       a local JSONL file (a bare PATH.jsonl is accepted too)
  tfds:NAME[:SPLIT]                a prepared tfds dataset in array_record format, read with
                                   tfds.data_source from the config's tfds_data_dir (NAME may
                                   carry /CONFIG and :VERSION, e.g. tfds:my_rows/v2:1.0.0:train)
  hf:NAME[:SPLIT]                  Hugging Face `datasets`: a hub id, or a local folder (one
                                   written by save_to_disk, or a folder of data files)
  hf:NAME:CONFIG:SPLIT             a hub dataset's configuration (SPLIT may be empty)
  hf:json|csv|parquet|text|arrow:FILES[:SPLIT]
                                   local files through a packaged builder (FILES: a path, a
                                   glob, or several separated by ",")

SPLIT may carry a slice, e.g. train[:1000]. A missing SPLIT is the caller's default ("train"
for training rows, the benchmark's split for evaluation).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ps_jax.data.rows import MalformedRow, Row, RowLimits, RowStats, parse_row, validate

ToRow = Callable[[Any], Row]


class RowSource:
  """Valid rows of a random-access collection of raw records (dicts, or what ``_decode`` reads).

  ``to_row`` turns one decoded record into a Row: ``parse_row`` for rows already in our or
  the reference's schema, or a processor from ``ps_jax.data.processors`` (use
  ``functools.partial`` for its options; it stays picklable).
  """

  def __init__(
    self,
    records: Sequence[Any],
    *,
    to_row: ToRow = parse_row,
    limits: RowLimits | None = None,
  ):
    self._records = records
    self._to_row = to_row
    self.limits = limits
    self.stats = RowStats()
    self._index = self._scan((i, records[i]) for i in range(len(records)))

  def _scan(self, keyed_records: Iterable[tuple[int, Any]]) -> np.ndarray:
    keep = []
    for key, record in keyed_records:
      try:
        self._convert(record)
      except MalformedRow as e:
        self.stats.skip(e.reason)
        continue
      keep.append(key)
    self.stats.valid = len(keep)
    return np.asarray(keep, dtype=np.int64)

  def _decode(self, record: Any) -> Any:
    return record

  def _fetch(self, key: int) -> Any:
    return self._records[key]

  def _convert(self, record: Any) -> Row:
    return validate(self._to_row(self._decode(record)), self.limits)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> Row:
    return self._convert(self._fetch(int(self._index[index])))

  def __iter__(self) -> Iterator[Row]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.stats})"


def _parse_json_line(line: bytes) -> Any:
  try:
    return json.loads(line)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    raise MalformedRow("line", "invalid_json", str(e)) from None


class JsonlSource(RowSource):
  """Rows of a JSONL file, one JSON object per line; blank lines are ignored.

  A line that is not valid JSON is counted as ``"line:invalid_json"``, not raised.
  """

  def __init__(
    self,
    path: str | os.PathLike[str],
    *,
    to_row: ToRow = parse_row,
    limits: RowLimits | None = None,
  ):
    self.path = os.fspath(path)
    self._to_row = to_row
    self.limits = limits
    self.stats = RowStats()
    # Keys are byte offsets of the lines, so __getitem__ can seek without keeping text.
    self._index = self._scan(self._iter_lines())

  def _iter_lines(self) -> Iterator[tuple[int, bytes]]:
    with open(self.path, "rb") as f:
      offset = 0
      for line in f:
        if line.strip():
          yield offset, line
        offset += len(line)

  def _decode(self, record: bytes) -> Any:
    return _parse_json_line(record)

  def _fetch(self, key: int) -> bytes:
    with open(self.path, "rb") as f:
      f.seek(key)
      return f.readline()

  def __repr__(self) -> str:
    return f"JsonlSource({self.path!r}: {self.stats})"


def _import_datasets(what: str):
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f"{what} needs the Hugging Face `datasets` package, which is not installed: "
      "pip install 'ps_jax[hub]' (or pip install datasets)"
    ) from e
  return datasets


def _saved_to_disk(path: str) -> bool:
  """True for a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
  return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(
    os.path.join(path, "dataset_dict.json")
  )


def load_hf_dataset(
  path: str,
  *,
  split: str,
  name: str | None = None,
  data_files: str | Sequence[str] | None = None,
  what: str = "hf_source",
  **load_kwargs: Any,
):
  """A map-style ``datasets.Dataset``: ``load_from_disk`` for a folder written by
  ``save_to_disk`` (a DatasetDict is indexed by ``split``), else
  ``datasets.load_dataset(path, name, split=split, [data_files=...], **load_kwargs)`` (a hub
  id, a local folder of data files, or a packaged builder such as "json" with data_files).

  Needs the optional ``datasets`` package (imported here, not at module load). Streaming
  datasets have no random access and are refused.
  """
  datasets = _import_datasets(what)
  if data_files is None and os.path.isdir(path) and _saved_to_disk(path):
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
      if split not in ds:
        raise ValueError(
          f"{path!r} is a DatasetDict without split {split!r}; its splits: {sorted(ds)}"
        )
      ds = ds[split]
  else:
    if data_files is not None:
      load_kwargs["data_files"] = data_files
    ds = datasets.load_dataset(path, name, split=split, **load_kwargs)
  if not hasattr(ds, "__len__"):
    raise TypeError(
      f"{path!r} split {split!r} loaded as {type(ds).__name__}, which has no random access; "
      "load it without streaming=True (or pass a specific split)"
    )
  return ds


def hf_source(
  path: str,
  *,
  split: str,
  name: str | None = None,
  to_row: ToRow = parse_row,
  limits: RowLimits | None = None,
  **load_kwargs: Any,
) -> RowSource:
  """Rows of a Hugging Face dataset (see ``load_hf_dataset``): a hub id, a local folder
  (``save_to_disk`` output or data files), or a packaged builder with ``data_files=``."""
  ds = load_hf_dataset(path, split=split, name=name, **load_kwargs)
  return RowSource(ds, to_row=to_row, limits=limits)


def decode_tfds_record(record: Any) -> Any:
  """A record from ``tfds.data_source`` as plain Python: bytes -> str, arrays -> lists.

  tfds returns ``Text`` features as UTF-8 bytes and sequences as lists or numpy arrays.
  """
  if isinstance(record, Mapping):
    return {k: decode_tfds_record(v) for k, v in record.items()}
  if isinstance(record, bytes):  # also np.bytes_
    try:
      return record.decode("utf-8")
    except UnicodeDecodeError as e:
      raise MalformedRow("row", "invalid", f"text is not UTF-8: {e}") from None
  if isinstance(record, np.ndarray):
    if record.ndim == 0:
      return decode_tfds_record(record.item())
    return [decode_tfds_record(x) for x in record]
  if isinstance(record, (list, tuple)):
    return [decode_tfds_record(x) for x in record]
  if isinstance(record, np.generic):
    return record.item()
  return record


class TfdsSource(RowSource):
  """RowSource whose records come from ``tfds.data_source`` and are decoded to dicts first."""

  def _decode(self, record: Any) -> Any:
    return decode_tfds_record(record)


def tfds_source(
  name: str,
  *,
  split: str,
  data_dir: str | os.PathLike[str] | None = None,
  to_row: ToRow = parse_row,
  limits: RowLimits | None = None,
) -> TfdsSource:
  """Rows of a prepared tfds dataset in array_record format (no TensorFlow needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  ds = tfds.data_source(name, split=split, data_dir=data_dir)
  return TfdsSource(ds, to_row=to_row, limits=limits)


class ConcatRows(Sequence[Row]):
  """Random-access concatenation of row sequences (lists of Rows, RowSources): the rows stay
  where they are (a grain worker receives the sources, not the rows)."""

  def __init__(self, parts: Iterable[Sequence[Row]]):
    self.parts = [p for p in parts if len(p)]
    self._ends = list(itertools.accumulate(len(p) for p in self.parts))

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, index: int | slice) -> Row | list[Row]:
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"row {index} out of range [0, {len(self)})")
    part = bisect.bisect_right(self._ends, index)
    return self.parts[part][index - (self._ends[part - 1] if part else 0)]

  def __repr__(self) -> str:
    return f"ConcatRows({len(self)} rows in {len(self.parts)} parts)"


# ---------------------------------------------------------------------------- source specs

KINDS = ("synthetic", "jsonl", "tfds", "hf")
HF_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # packaged builders reading FILES
FORMS = {
  "synthetic": ("synthetic[:FAMILY,...]",),
  "jsonl": ("jsonl:PATH (or a bare PATH.jsonl)",),
  "tfds": ("tfds:NAME[:SPLIT]",),
  "hf": (
    "hf:NAME[:SPLIT] (a hub id or a local folder)",
    "hf:NAME:CONFIG:SPLIT",
    f"hf:{'|'.join(HF_BUILDERS)}:FILES[:SPLIT]",
  ),
}
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")  # a tfds version, as in NAME:1.0.0
_SEP = re.compile(r":(?![^\[]*\])")  # ":" outside brackets (a split may be train[:10])


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """A parsed source string (see the module docstring for the forms)."""

  kind: str  # one of KINDS
  name: str = ""  # jsonl: the file; tfds: NAME[/CONFIG][:VERSION]; hf: id, folder or builder
  split: str | None = None  # None: the caller's default split
  config: str | None = None  # hf: the dataset configuration
  data_files: str | None = None  # hf packaged builders: the files ("," separates several)
  families: tuple[str, ...] = ()  # synthetic: () = the config's families
  text: str = ""  # the string it was parsed from


def _forms(kinds: Sequence[str]) -> str:
  return "; ".join(f for k in kinds for f in FORMS[k])


def parse_source(
  spec: str, *, field: str = "source", kinds: Sequence[str] = KINDS, bare_path: bool = True
) -> SourceSpec:
  """Parses a source string; a ValueError names `field`, the problem and the accepted forms.

  kinds: the forms the caller accepts. bare_path: a string without a known prefix that ends
  in .jsonl or .jsonl.gz, or names an existing file, is read as `jsonl:PATH`.
  """

  def bad(problem: str) -> ValueError:
    return ValueError(f"{field}={spec!r}: {problem}; accepted forms: {_forms(kinds)}")

  if not isinstance(spec, str) or not spec.strip():
    raise bad("expected a non-empty string")
  spec = spec.strip()
  kind, sep, rest = spec.partition(":")
  if kind not in KINDS:
    if (
      bare_path
      and "jsonl" in kinds
      and (spec.endswith((".jsonl", ".jsonl.gz")) or os.path.isfile(spec))
    ):
      kind, rest, sep = "jsonl", spec, ":"
    else:
      raise bad(f"unknown source kind {kind!r}" if sep else "not a source")
  if kind not in kinds:
    raise bad(f"a {kind} source is not accepted here")
  if kind == "synthetic":
    families = tuple(f.strip() for f in rest.split(",") if f.strip())
    if sep and not families:
      raise bad("expected FAMILY,... after 'synthetic:'")
    return SourceSpec("synthetic", families=families, text=spec)
  if not rest:
    raise bad(f"nothing after '{kind}:'")
  if kind == "jsonl":
    return SourceSpec("jsonl", name=rest, text=spec)
  parts = _SEP.split(rest)
  if kind == "tfds":
    name, tail = parts[0], parts[1:]
    if tail and _VERSION.match(tail[0]):
      name, tail = f"{name}:{tail[0]}", tail[1:]
    if len(tail) > 1 or not name:
      raise bad("expected tfds:NAME[:SPLIT]")
    return SourceSpec("tfds", name=name, split=(tail[0] or None) if tail else None, text=spec)
  name, tail = parts[0], parts[1:]
  if not name:
    raise bad("expected a dataset name after 'hf:'")
  if name in HF_BUILDERS and not os.path.isdir(name):
    if not tail or not tail[0] or len(tail) > 2:
      raise bad(f"expected hf:{name}:FILES[:SPLIT]")
    split = tail[1] if len(tail) == 2 else None
    return SourceSpec("hf", name=name, data_files=tail[0], split=split or None, text=spec)
  if len(tail) > 2:
    raise bad("too many ':' fields")
  config = tail[0] if len(tail) == 2 else None
  split = tail[-1] if tail else None
  return SourceSpec("hf", name=name, config=config or None, split=split or None, text=spec)


def missing_file(spec: SourceSpec, field: str, kinds: Sequence[str] = KINDS) -> FileNotFoundError:
  """The error for a jsonl: spec whose file does not exist (it lists the accepted forms: a
  mistyped spec often reads as a path)."""
  return FileNotFoundError(
    f"{field}={spec.text!r}: no such file {spec.name!r}; accepted forms: {_forms(kinds)}"
  )


def _data_files(files: str) -> str | list[str]:
  listed = [f for f in files.split(",") if f]
  return listed[0] if len(listed) == 1 else listed


def open_source(
  spec: str | SourceSpec,
  *,
  field: str = "source",
  split: str = "train",
  tfds_data_dir: str | os.PathLike[str] | None = None,
  to_row: ToRow = parse_row,
  limits: RowLimits | None = None,
) -> RowSource:
  """The RowSource of a jsonl:, tfds: or hf: spec (``synthetic`` needs the suite's settings:
  see ps_jax.experiment.build_rows). split: the split when the spec names none."""
  if isinstance(spec, str):
    spec = parse_source(spec, field=field, kinds=("jsonl", "tfds", "hf"))
  if spec.kind == "jsonl":
    if not os.path.isfile(spec.name):
      raise missing_file(spec, field)
    if spec.name.endswith(".gz"):
      raise ValueError(
        f"{field}={spec.text!r}: gzip has no random access; decompress it (gunzip) first"
      )
    return JsonlSource(spec.name, to_row=to_row, limits=limits)
  if spec.kind == "tfds":
    return tfds_source(
      spec.name, split=spec.split or split, data_dir=tfds_data_dir, to_row=to_row, limits=limits
    )
  if spec.kind == "hf":
    return RowSource(load_hf(spec, split=split, field=field), to_row=to_row, limits=limits)
  raise ValueError(f"{field}={spec.text!r}: a {spec.kind} source has no RowSource")


def load_hf(spec: SourceSpec, *, split: str, field: str = "source"):
  """The ``datasets.Dataset`` of an hf: spec (see ``load_hf_dataset``). Files read through a
  packaged builder (hf:json:FILES) form one split, "train", whatever the caller's default."""
  return load_hf_dataset(
    spec.name,
    split=spec.split or ("train" if spec.data_files else split),
    name=spec.config,
    data_files=_data_files(spec.data_files) if spec.data_files else None,
    what=f"{field}={spec.text!r}",
  )


def open_records(
  spec: SourceSpec,
  *,
  split: str,
  field: str = "source",
  tfds_data_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
  """The raw records of a tfds: or hf: spec, in order, as plain Python dicts (for readers
  with their own schema: the evaluation loaders, the distillation inputs). The dataset is
  opened here (errors are raised now); records are read as the iterator advances."""
  if spec.kind == "hf":
    return iter(load_hf(spec, split=split, field=field))
  if spec.kind == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    ds = tfds.data_source(spec.name, split=spec.split or split, data_dir=tfds_data_dir)
    return (decode_tfds_record(ds[i]) for i in range(len(ds)))
  raise ValueError(f"{field}={spec.text!r}: open_records reads tfds: and hf: sources")


def write_jsonl(rows: Iterable[Row | Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
  """Writes rows (Rows in our field names, or plain dicts as they are), one per line.

  Creates the parent folder; returns the number of lines written.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      obj = row.to_dict() if isinstance(row, Row) else dict(row)
      f.write(json.dumps(obj, ensure_ascii=False) + "\n")
      count += 1
  return count
