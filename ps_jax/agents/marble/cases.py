"""The 100 MARBLE database-diagnosis cases (MIT; vendored in ps_jax/agents/data/marble/)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

SHA256 = "e1128d946d49c4943849a758b0c2d22a1af57b7a71c43694107813d8a1542631"
NUM_CASES = 100
# Where the release downloads the file at run time (for users who want to re-fetch it).
SOURCE_URL = (
  "https://raw.githubusercontent.com/ulab-uiuc/MARBLE/main/multiagentbench/database/"
  "database_main.jsonl"
)


def default_path() -> str:
  return str(resources.files("ps_jax.agents") / "data" / "marble" / "database_main.jsonl")


@dataclasses.dataclass(frozen=True)
class Agent:
  agent_id: str
  profile: str


@dataclasses.dataclass(frozen=True)
class MarbleCase:
  """One row. `labels` are the 5 allowed labels, `root_causes` the gold (1 or 2), and
  `number_of_labels_pred` the most labels a prediction may carry (2 or 3)."""

  task_id: int
  content: str
  output_format: str
  labels: tuple[str, ...]
  root_causes: tuple[str, ...]
  number_of_labels_pred: int
  init_sql: str
  anomalies: tuple[Mapping[str, Any], ...]
  agents: tuple[Agent, ...]
  raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)


def _field(row: Mapping[str, Any], path: str, kind, line: int):
  value: Any = row
  for key in path.split("."):
    if not isinstance(value, Mapping) or key not in value:
      raise ValueError(f"MARBLE row {line}: missing field {path!r}")
    value = value[key]
  if not isinstance(value, kind):
    raise ValueError(f"MARBLE row {line}: field {path!r} is {type(value).__name__}, not {kind}")
  return value


def parse_case(row: Mapping[str, Any], line: int = 0) -> MarbleCase:
  labels = tuple(str(x).strip() for x in _field(row, "task.labels", list, line))
  gold = tuple(str(x).strip() for x in _field(row, "task.root_causes", list, line))
  n_pred = int(_field(row, "task.number_of_labels_pred", (int, str), line))
  if not gold or any(g not in labels for g in gold):
    raise ValueError(f"MARBLE row {line}: task.root_causes {gold} not within task.labels")
  if n_pred < len(gold):
    raise ValueError(f"MARBLE row {line}: number_of_labels_pred {n_pred} < {len(gold)} gold")
  anomalies = tuple(_field(row, "environment.anomalies", list, line))
  if not all(isinstance(a, Mapping) and a.get("anomaly") for a in anomalies):
    raise ValueError(f"MARBLE row {line}: environment.anomalies entries need an 'anomaly'")
  agents = tuple(
    Agent(str(a["agent_id"]), str(a.get("profile", ""))) for a in _field(row, "agents", list, line)
  )
  return MarbleCase(
    task_id=int(_field(row, "task_id", (int, str), line)),
    content=_field(row, "task.content", str, line),
    output_format=str(row.get("task", {}).get("output_format", "")),
    labels=labels,
    root_causes=gold,
    number_of_labels_pred=n_pred,
    init_sql=_field(row, "environment.init_sql", str, line),
    anomalies=anomalies,
    agents=agents,
    raw=row,
  )


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def load_cases(path: str | os.PathLike | None = None, *, sha256: str | None = SHA256):
  """Cases in file order. The file's sha256 must equal `sha256` (the vendored file's by
  default; pass None to read another version of the file)."""
  path = os.fspath(path) if path is not None else default_path()
  if sha256 is not None:
    got = file_sha256(path)
    if got != sha256:
      raise ValueError(f"{path}: sha256 {got} != expected {sha256} (a different or damaged file)")
  cases = []
  with open(path, encoding="utf-8") as f:
    for line, text in enumerate(f, 1):
      if text.strip():
        try:
          row = json.loads(text)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line}: not JSON ({e})") from e
        cases.append(parse_case(row, line))
  return cases
