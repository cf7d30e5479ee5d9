"""Shared benchmark helpers: environment record, JSON + markdown + PNG output (the timing
protocol and its statistics are in `timing`).

Every benchmark writes `<stem>.json` (config, environment, medians, spreads, raw samples),
`<stem>.md` (a markdown table plus notes) and `<stem>.png` (a bar chart), all from one result
dict, so the documents always show the numbers of the JSON beside them.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

# Distributions whose versions every benchmark records (absent ones are recorded as None).
DEFAULT_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers")


def cpu_model() -> str | None:
  """The CPU model name from /proc/cpuinfo (None where unavailable)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def schedulable_cores() -> int:
  """CPU cores this process may run on (its affinity), not the host's total."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def package_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
  out = {}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def environment(packages: Sequence[str] = DEFAULT_PACKAGES, **extra) -> dict[str, Any]:
  """Where and with what a benchmark ran: host, CPU, accelerator, package versions.

  `extra` entries (e.g. thread settings) are added as they are.
  """
  import jax  # pylint: disable=import-outside-toplevel

  devices = jax.devices()
  try:
    load = os.getloadavg()
  except OSError:
    load = None
  env = {
    "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "os": platform.platform(),
    "machine": platform.machine(),
    "cpu_model": cpu_model(),
    "cpu_cores": schedulable_cores(),
    "load_average_1_5_15": list(load) if load else None,
    "jax_backend": jax.default_backend(),
    "jax_devices": [f"{d.platform}:{d.device_kind}" for d in devices],
    "versions": package_versions(packages),
  }
  env.update(extra)
  return env


def device_name(env: Mapping[str, Any]) -> str:
  """A one-line machine name for tables and plots, e.g. "cpu: AMD EPYC (2 cores)"."""
  if env.get("jax_backend") == "cpu":
    return f"CPU: {env.get('cpu_model')} ({env.get('cpu_cores')} cores)"
  kinds = sorted(set(env.get("jax_devices") or []))
  return f"{env.get('jax_backend')}: {', '.join(kinds)} (host CPU {env.get('cpu_model')})"


def to_jsonable(obj: Any) -> Any:
  """Dataclasses, tuples, numpy scalars and arrays -> plain JSON values."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return to_jsonable(dataclasses.asdict(obj))
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "tolist"):  # numpy scalars and arrays
    return to_jsonable(obj.tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return str(obj)
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return str(obj)


def fmt(x: float | None, digits: int = 1) -> str:
  """A number for a table: fixed digits, thousands separators; "-" for None."""
  if x is None:
    return "-"
  return f"{x:,.{digits}f}"


def fmt_spread(s: Mapping[str, Any] | None, digits: int = 1) -> str:
  """ "median (min-max)" of a summarize/rate dict."""
  if not s:
    return "-"
  return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BarChart:
  """Grouped bars: one group per label, one bar per series; values[series][group]."""

  title: str
  ylabel: str
  groups: Sequence[str]
  values: Mapping[str, Sequence[float | None]]
  annotate: bool = True


def write_bar_chart(path: str, chart: BarChart) -> None:
  """Writes a PNG bar chart (matplotlib's Agg backend, no display needed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  n_series = max(len(chart.values), 1)
  width = 0.8 / n_series
  fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(chart.groups) * n_series / 2 + 3), 4))
  for i, (name, vals) in enumerate(chart.values.items()):
    xs = [g + (i - (n_series - 1) / 2) * width for g in range(len(chart.groups))]
    ys = [0.0 if v is None else float(v) for v in vals]
    bars = ax.bar(xs, ys, width, label=name)
    if chart.annotate:
      ax.bar_label(
        bars, labels=[("" if v is None else f"{v:,.0f}") for v in vals], fontsize=8, padding=2
      )
  ax.set_xticks(range(len(chart.groups)), chart.groups)
  ax.set_ylabel(chart.ylabel)
  ax.set_title(chart.title, fontsize=10)
  ax.legend()
  ax.margins(y=0.15)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(
  stem: str, result: Mapping[str, Any], markdown: str, chart: BarChart | None = None
) -> dict[str, str]:
  """Writes stem.json (the result), stem.md (markdown) and stem.png (chart, if given).

  Creates the folder; returns {"json": path, "md": path[, "png": path]}.
  """
  folder = os.path.dirname(os.path.abspath(stem))
  os.makedirs(folder, exist_ok=True)
  paths = {"json": stem + ".json", "md": stem + ".md"}
  with open(paths["json"], "w") as f:
    json.dump(to_jsonable(result), f, indent=2)
    f.write("\n")
  with open(paths["md"], "w") as f:
    f.write(markdown.rstrip() + "\n")
  if chart is not None:
    paths["png"] = stem + ".png"
    write_bar_chart(paths["png"], chart)
  return paths
