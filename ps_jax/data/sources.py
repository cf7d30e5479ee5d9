"""Row sources: local JSONL, Hugging Face ``datasets``, and ``tfds.data_source`` (array_record).

Every source is random access (``__len__`` + ``__getitem__`` returning a :class:`Row`), so
it can be handed to ``grain.MapDataset.source`` and shuffled, sharded and resumed by index.
To keep indices dense and lengths exact, a source scans its records once at construction:
malformed records are left out of the index and counted in ``source.stats`` (the scan costs
one read of the data; rows are converted again, cheaply, on each access).

Sources pickle cleanly (grain workers receive a copy): the JSONL source keeps only the path
and line offsets and reopens the file on each access.
"""

from __future__ import annotations

import json
import os
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


def hf_source(
  path: str,
  *,
  split: str,
  name: str | None = None,
  to_row: ToRow = parse_row,
  limits: RowLimits | None = None,
  **load_kwargs: Any,
) -> RowSource:
  """Rows of ``datasets.load_dataset(path, name, split=split, **load_kwargs)``.

  Needs the optional Hugging Face ``datasets`` package (imported here, not at module load).
  Streaming datasets have no random access and are refused; use the map-style dataset.
  """
  try:
    import datasets
  except ImportError as e:
    raise ImportError(
      "hf_source needs the Hugging Face `datasets` package, which is not installed: "
      "pip install datasets"
    ) from e
  ds = datasets.load_dataset(path, name, split=split, **load_kwargs)
  if not hasattr(ds, "__len__"):
    raise TypeError(
      f"{path!r} split {split!r} loaded as {type(ds).__name__}, which has no random access; "
      "load it without streaming=True (or pass a specific split)"
    )
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
  import tensorflow_datasets as tfds

  ds = tfds.data_source(name, split=split, data_dir=data_dir)
  return TfdsSource(ds, to_row=to_row, limits=limits)


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
