"""The timing protocol every benchmark shares: warm-up, interleaved repeats, budgets, memory.

A benchmark describes each thing it times as a `Path` (a zero-argument call that returns a
`Sample`), then `measure` runs them all under one `Protocol`:

1. warm-up: `warmup` untimed calls of each path in turn (the first one compiles; JAX's
   compile events are recorded per path), the first of them under the path's peak-memory
   probe, then the path's memory plan (`Path.memory`, e.g. XLA's memory analysis);
2. round 1: one timed call of every path; it sets each path's repeat count: `repeats`,
   reduced to what fits `path_budget_s` at that speed, never below `min_repeats`;
3. rounds 2, 3, ...: one call of every path that still needs samples, in the same order, so
   that load on the machine hits all paths alike (paths are interleaved, never run back to
   back), and ratios of the same round can be formed (`round_ratios`).

Every call synchronises its own device work (a `Sample` is final when returned).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any


@dataclasses.dataclass
class Sample:
  """One timed call: its seconds, optional named parts (seconds) and what it produced."""

  seconds: float
  parts: Mapping[str, float] = dataclasses.field(default_factory=dict)
  output: Any = None  # e.g. the first token id, or generated ids


@dataclasses.dataclass
class Path:
  """One timed path: `once()` -> Sample. `memory()` (after warm-up) -> a memory record;
  `peak()` -> a context manager (`PeakProbe`) that watches the first warm-up call."""

  once: Callable[[], Sample]
  memory: Callable[[], dict[str, Any] | None] | None = None
  peak: Callable[[], PeakProbe] | None = None


@dataclasses.dataclass(frozen=True)
class Protocol:
  repeats: int = 5  # timed calls per path ...
  min_repeats: int = 2  # ... reduced down to this where one call exceeds path_budget_s / repeats
  warmup: int = 1  # untimed calls per path (the first one compiles)
  path_budget_s: float = math.inf  # timed seconds per path before its repeats are reduced
  memory: bool = True  # run the memory plan and the peak probes

  def __post_init__(self):
    if self.repeats < 1 or self.min_repeats < 1 or self.min_repeats > self.repeats:
      raise ValueError(f"need 1 <= min_repeats ({self.min_repeats}) <= repeats ({self.repeats})")
    if self.warmup < 1:
      raise ValueError(f"warmup={self.warmup}: must be >= 1 (compilation must be excluded)")
    if not self.path_budget_s > 0:
      raise ValueError(f"path_budget_s={self.path_budget_s}: must be > 0")

  def repeats_for(self, seconds: float) -> int:
    fits = self.path_budget_s / max(seconds, 1e-9)
    return max(self.min_repeats, min(self.repeats, int(fits) if math.isfinite(fits) else 10**9))


def measure(
  paths: Mapping[str, Path],
  protocol: Protocol,
  *,
  log: Callable[[str], None] | None = None,
  on_done: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
  """Runs the protocol (module docstring) over `paths`; returns per path: status, warmup_s,
  compile_events_s, memory / peak (where given), seconds (summarize), repeats,
  reduced_repeats, parts_s, outputs (one per timed call). A path that raises in its warm-up
  gets status "error" with the reason and is not timed (the others are). `on_done(name)` is
  called once a path has all its samples."""
  out: dict[str, dict[str, Any]] = {}
  for name, path in paths.items():
    rec: dict[str, Any] = {"status": "ok"}
    warm = []
    try:
      with jax_compile_events() as events:
        for i in range(protocol.warmup):
          if i == 0 and protocol.memory and path.peak is not None:
            with path.peak() as probe:
              warm.append(path.once().seconds)
            rec["peak"] = probe.record()
          else:
            warm.append(path.once().seconds)
      if protocol.memory and path.memory is not None:
        rec["memory"] = path.memory()
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory): not timed
      rec = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:1000]}
      if log is not None:
        log(f"    {name:<20s} failed in its warm-up: {rec['reason'][:200]}")
      if on_done is not None:
        on_done(name)
    else:
      rec["warmup_s"] = warm
      rec["compile_events_s"] = dict(events)
    out[name] = rec
  paths = {k: p for k, p in paths.items() if out[k]["status"] == "ok"}
  samples: dict[str, list[Sample]] = {name: [] for name in paths}
  target: dict[str, int] = {}
  for i in range(protocol.repeats):  # round 1 (i = 0) sets each path's repeat count
    for name, path in paths.items():
      if i == 0:
        samples[name].append(path.once())
        target[name] = protocol.repeats_for(samples[name][0].seconds)
      elif i < target[name]:
        samples[name].append(path.once())
      if i == target[name] - 1 and on_done is not None:
        on_done(name)
  for name in paths:
    rec, got = out[name], samples[name]
    rec["seconds"] = summarize([s.seconds for s in got])
    rec["repeats"] = len(got)
    rec["reduced_repeats"] = len(got) < protocol.repeats
    rec["parts_s"] = {k: summarize([s.parts[k] for s in got]) for k in got[0].parts}
    rec["outputs"] = [s.output for s in got]
    if log is not None:
      s = rec["seconds"]
      log(
        f"    {name:<20s} median {s['median']:.4f} s (min {s['min']:.4f}, "
        f"max {s['max']:.4f}, n={rec['repeats']})"
      )
  return out


def round_ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[float]:
  """Per-round ratios a/b of two `summarize` records measured in the same rounds."""
  return [x / y for x, y in zip(a["samples"], b["samples"], strict=False) if y > 0]


def seconds_per_call(fn, args_fn, *, repeats: int, calls: int = 8) -> dict[str, Any]:
  """Seconds per call of a jitted fn: `repeats` samples, each `calls` back-to-back calls
  (args_fn(prev_out) gives the next args, e.g. to feed a donated cache back), synchronised;
  one untimed call first compiles."""
  import jax  # pylint: disable=import-outside-toplevel

  out = jax.block_until_ready(fn(*args_fn(None)))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args_fn(out))
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - start) / calls)
  return summarize(samples)


# ------------------------------------------------------------------------------------------
# Statistics.


def summarize(samples: Sequence[float]) -> dict[str, Any]:
  """Median and spread of repeated measurements (seconds, or any unit)."""
  if not samples:
    raise ValueError("summarize: no samples")
  xs = [float(x) for x in samples]
  return {
    "median": statistics.median(xs),
    "min": min(xs),
    "max": max(xs),
    "n": len(xs),
    "samples": xs,
  }


def rate(amount: float, seconds: Mapping[str, Any]) -> dict[str, Any]:
  """A throughput summary (amount / seconds) from a `summarize` dict of times.

  The median rate is amount / median time; min and max come from the max and min times.
  """
  return {
    "median": amount / seconds["median"],
    "min": amount / seconds["max"],
    "max": amount / seconds["min"],
    "n": seconds["n"],
  }


# ------------------------------------------------------------------------------------------
# Compilation.

COMPILE_PHASES = (
  "jaxpr_trace_duration",
  "jaxpr_to_mlir_module_duration",
  "backend_compile_duration",
)


@contextlib.contextmanager
def jax_compile_events() -> Iterator[dict[str, float]]:
  """Collects JAX's compile-phase durations (seconds) inside the block.

  Keys: each phase of COMPILE_PHASES (tracing to a jaxpr, lowering to StableHLO, XLA's
  backend compile), summed over all programs, and "<phase>:<function>" per jitted function
  (e.g. "backend_compile_duration:_decode"); see `compile_seconds`.
  """
  from jax._src import monitoring  # pylint: disable=import-outside-toplevel

  totals: dict[str, float] = {}

  def listener(event: str, duration: float, **kwargs) -> None:
    if not event.startswith("/jax/core/compile/"):
      return
    name = event.rsplit("/", 1)[-1]
    totals[name] = totals.get(name, 0.0) + float(duration)
    fun = str(kwargs.get("fun_name") or "")
    if fun:
      if fun.startswith("jit(") and fun.endswith(")"):
        fun = fun[4:-1]
      key = f"{name}:{fun}"
      totals[key] = totals.get(key, 0.0) + float(duration)

  monitoring.register_event_duration_secs_listener(listener)
  try:
    yield totals
  finally:
    monitoring.unregister_event_duration_listener(listener)


def compile_seconds(events: Mapping[str, float], function: str | None = None) -> float:
  """Tracing + lowering + XLA compile time from `jax_compile_events`, of one jitted function
  (by name) or of everything compiled in the block."""
  suffix = f":{function}" if function else ""
  return sum(events.get(phase + suffix, 0.0) for phase in COMPILE_PHASES)


# ------------------------------------------------------------------------------------------
# Memory.


def xla_memory(fn, *args, **kwargs) -> dict[str, int] | None:
  """XLA's memory plan of a jitted fn's program for these arguments (bytes): argument, output,
  temp, alias, generated_code and total = argument + output + temp - alias (the program's
  live set, its inputs included); None where the backend has no analysis. Reuses the
  executable a call with the same arguments compiled."""
  try:
    stats = fn.lower(*args, **kwargs).compile().memory_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without the analysis)
    return None
  if stats is None:
    return None
  out = {
    name: int(getattr(stats, f"{name}_size_in_bytes"))
    for name in ("argument", "output", "temp", "alias", "generated_code")
  }
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


class PeakProbe:
  """Peak memory growth inside a `with` block; `record()` -> {"kind", "peak_delta_bytes"}
  (None where the peak cannot be observed)."""

  kind = "none"

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def delta(self) -> int | None:
    return None

  def record(self) -> dict[str, Any]:
    return {"kind": self.kind, "peak_delta_bytes": self.delta()}


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSPeak(PeakProbe):
  """Peak growth of this process's resident set (sampled every ~1 ms; allocator reuse can
  make it an underestimate)."""

  kind = "rss_peak_delta"

  def __init__(self, interval_s: float = 0.001):
    self.interval_s = interval_s
    self.baseline = self.peak = 0
    self._stop = threading.Event()
    self._thread = None

  def _sample(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _rss_bytes())
      time.sleep(self.interval_s)

  def __enter__(self):
    self.baseline = self.peak = _rss_bytes()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())
    return False

  def delta(self) -> int:
    return self.peak - self.baseline


class JaxDevicePeak(PeakProbe):
  """Growth of a JAX device's `peak_bytes_in_use` over the bytes in use before the block.

  JAX cannot reset the peak: a block whose peak stays below an earlier one is not observable
  (delta None). Needs a backend with memory stats (GPU, TPU); CPU has none.
  """

  kind = "device_peak_delta"

  def __init__(self, device=None):
    import jax  # pylint: disable=import-outside-toplevel

    self.device = device or jax.devices()[0]
    self.before = self.peak_before = self.peak_after = None

  def _stats(self):
    return self.device.memory_stats() or {}

  def __enter__(self):
    s = self._stats()
    self.before, self.peak_before = s.get("bytes_in_use"), s.get("peak_bytes_in_use")
    return self

  def __exit__(self, *exc):
    self.peak_after = self._stats().get("peak_bytes_in_use")
    return False

  def delta(self) -> int | None:
    if None in (self.before, self.peak_before, self.peak_after):
      return None
    if self.peak_after <= self.peak_before:
      return None
    return self.peak_after - self.before


class TorchCudaPeak(PeakProbe):
  """torch.cuda.max_memory_allocated growth over the bytes allocated before the block."""

  kind = "torch_cuda_peak_delta"

  def __init__(self, device):
    import torch  # pylint: disable=import-outside-toplevel

    self.torch, self.device, self.before, self.peak = torch, device, 0, 0

  def __enter__(self):
    self.torch.cuda.synchronize(self.device)
    self.torch.cuda.reset_peak_memory_stats(self.device)
    self.before = self.torch.cuda.memory_allocated(self.device)
    return self

  def __exit__(self, *exc):
    self.torch.cuda.synchronize(self.device)
    self.peak = self.torch.cuda.max_memory_allocated(self.device)
    return False

  def delta(self) -> int:
    return self.peak - self.before


def jax_peak_probe() -> Callable[[], PeakProbe] | None:
  """A probe factory for JAX paths where the default device reports memory stats."""
  import jax  # pylint: disable=import-outside-toplevel

  if not (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"):
    return None
  return JaxDevicePeak


def torch_peak_probe(device) -> Callable[[], PeakProbe]:
  """RSS growth for torch on CPU, allocator peak growth on CUDA."""
  if str(device).startswith("cuda"):
    return lambda: TorchCudaPeak(device)
  return RSSPeak
