"""GAIA tasks from a local copy of the gated `gaia-benchmark/GAIA` dataset (Hugging Face layout).

Layout, under the dataset root (a `snapshot_download` folder or any copy of it):
  2023/<split>/metadata.parquet          all levels (the hub's layout since Oct 2025)
  2023/<split>/metadata.level{1,2,3}.parquet
  2023/<split>/metadata.jsonl            the older layout
  2023/<split>/<file_name>               attachments, beside the metadata
Columns used: task_id, Question, Level, Final answer, file_name (file_path as a fallback).
The first of metadata.parquet, metadata.jsonl, metadata.level*.parquet that exists is read.

The test split withholds its answers as "?": those tasks are kept with `gold == "?"` and
`scorable == False`, and the scorers refuse them (scoring.py).

Nothing of GAIA may be committed (its terms forbid resharing it in crawlable form); tests use
a synthetic fixture in the same layout.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Collection, Mapping
from typing import Any

from ps_jax.agents.gaia.scoring import HIDDEN_ANSWER

REPO_ID = "gaia-benchmark/GAIA"
CONFIG_YEAR = "2023"
_REQUIRED = ("task_id", "Question", "Level", "Final answer")

__all__ = ["REPO_ID", "GaiaTask", "load_gaia", "load_gaia_hub"]


@dataclasses.dataclass(frozen=True)
class GaiaTask:
  task_id: str
  question: str
  gold: str  # HIDDEN_ANSWER ("?") on the test split
  level: int  # 1..3
  files: tuple[pathlib.Path, ...] = ()  # attachments on local disk; empty when none

  @property
  def scorable(self) -> bool:
    """False where the gold answer is withheld (the test split's "?")."""
    return self.gold.strip() != HIDDEN_ANSWER


def _read_rows(split_dir: pathlib.Path) -> tuple[pathlib.Path, list[dict[str, Any]]]:
  """(the metadata source, its rows); a level-split parquet set is concatenated."""
  whole, jsonl = split_dir / "metadata.parquet", split_dir / "metadata.jsonl"
  levels = sorted(split_dir.glob("metadata.level*.parquet"))
  if whole.is_file():
    return whole, _read_parquet(whole)
  if jsonl.is_file():
    rows = []
    with open(jsonl, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{jsonl}: line {n} is not JSON ({e})") from e
    return jsonl, rows
  if levels:
    return split_dir, [r for p in levels for r in _read_parquet(p)]
  raise FileNotFoundError(
    f"no GAIA metadata in {split_dir}: expected metadata.parquet, metadata.jsonl or "
    "metadata.level*.parquet (see docs/agents_gaia.md for getting the gated data)"
  )


def _read_parquet(path: pathlib.Path) -> list[dict[str, Any]]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
  return pq.read_table(path).to_pylist()


def _task(row: Mapping[str, Any], where: str, root: pathlib.Path, split_dir: pathlib.Path):
  missing = [k for k in _REQUIRED if row.get(k) is None]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  task_id, question, gold = (str(row[k]) for k in ("task_id", "Question", "Final answer"))
  try:
    level = int(row["Level"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: field 'Level' is {row['Level']!r}, not an integer") from e
  if not 1 <= level <= 3:
    raise ValueError(f"{where}: field 'Level' is {level}, outside 1..3")
  files: tuple[pathlib.Path, ...] = ()
  name = (row.get("file_name") or "").strip()
  if name:
    tried = [split_dir / name]
    rel = (row.get("file_path") or "").strip()
    if rel and not pathlib.Path(rel).is_absolute():
      tried.append(root / rel)
    found = [p for p in tried if p.is_file()]
    if not found:
      raise FileNotFoundError(
        f"{where} (task {task_id}): attachment {name!r} not found; tried "
        + ", ".join(str(p) for p in tried)
      )
    files = (found[0],)
  return GaiaTask(task_id, question, gold, level, files)


def load_gaia(
  data_dir: str | pathlib.Path, split: str = "validation", *, levels: Collection[int] | None = None
) -> list[GaiaTask]:
  """The tasks of one split (optionally only some levels), in metadata order.

  Raises FileNotFoundError naming the folder or attachment that is missing and ValueError
  naming the row and field of a malformed row or a duplicated task_id.
  """
  root = pathlib.Path(data_dir).expanduser()
  if levels is not None and not set(levels) <= {1, 2, 3}:
    raise ValueError(f"levels must be a subset of {{1, 2, 3}}, got {sorted(levels)}")
  split_dir = root / CONFIG_YEAR / split
  if not split_dir.is_dir():
    raise FileNotFoundError(
      f"no GAIA split folder {split_dir}: data_dir must be the dataset root holding "
      f"{CONFIG_YEAR}/<split>/ (see docs/agents_gaia.md)"
    )
  source, rows = _read_rows(split_dir)
  tasks, seen = [], set()
  for n, row in enumerate(rows):
    task = _task(row, f"{source} row {n}", root, split_dir)
    if task.task_id in seen:
      raise ValueError(f"{source} row {n}: duplicate task_id {task.task_id!r}")
    seen.add(task.task_id)
    if levels is None or task.level in levels:
      tasks.append(task)
  return tasks


def load_gaia_hub(
  split: str = "validation",
  *,
  levels: Collection[int] | None = None,
  cache_dir: str | pathlib.Path | None = None,
  token: str | bool | None = None,
  endpoint: str | None = None,
) -> list[GaiaTask]:
  """Downloads one split of the gated dataset (your HF token must have accepted its terms)
  into the Hugging Face cache, then `load_gaia` on it. Fails with a RuntimeError saying what
  to do when the hub refuses access or cannot be reached."""
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    from huggingface_hub.errors import (  # pylint: disable=import-outside-toplevel
      GatedRepoError,
      HfHubHTTPError,
      LocalEntryNotFoundError,
      RepositoryNotFoundError,
    )
  except ImportError as e:
    raise ImportError("load_gaia_hub needs huggingface_hub (pip install huggingface_hub)") from e
  how = (
    f"accept the terms at https://huggingface.co/datasets/{REPO_ID}, log in (`hf auth login` "
    "or HF_TOKEN), or download it yourself and call load_gaia(<folder>)"
  )
  try:
    path = snapshot_download(
      repo_id=REPO_ID,
      repo_type="dataset",
      allow_patterns=[f"{CONFIG_YEAR}/{split}/*"],
      cache_dir=cache_dir,
      token=token,
      endpoint=endpoint,
    )
  except (GatedRepoError, RepositoryNotFoundError) as e:
    raise RuntimeError(
      f"{REPO_ID} is gated and access was refused (no token, or one without access): {how}"
    ) from e
  except LocalEntryNotFoundError as e:
    raise RuntimeError(f"{REPO_ID}: the hub is not reachable and no copy is cached: {how}") from e
  except HfHubHTTPError as e:
    raise RuntimeError(f"{REPO_ID}: the hub refused the download ({e}): {how}") from e
  return load_gaia(path, split, levels=levels)
