"""Time-to-first-token of text synthesis vs Parallel-Synthesis (DESIGN.md 2.10).

Per cell (N branches of exactly L tokens each), in one run, interleaved (`timing.measure`):
the ps_jax text path, its raw prefill floor and transformers on the same text-prompt ids; the
ps_jax Parallel-Synthesis path, its prefill floor and the reference-style transformers PS
(`paths` says exactly what each times). Ratios put PS against the **best** text path of the
run. Text prompts beyond the model's context are not run (the cache paths still are: their
positions only reach L + |Q|).

Use `run(model, tokenizer, TTFTConfig(...), torch_model=...)`, then
`ttft_report.write(result, stem)`; a tokenizer of None runs on random token ids.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ps_jax import generation
from ps_jax.adapter import Adapter
from ps_jax.bench import checks, inputs, report, timing
from ps_jax.bench.paths import Drivers
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig
from ps_jax.prompts import PromptTemplates

PATHS = ("text", "text_floor", "torch_text", "parallel_synthesis", "ps_floor", "torch_ps")
TEXT_PATHS = ("text", "text_floor", "torch_text")
TORCH_PATHS = ("torch_text", "torch_ps")
# Warm-up (and memory probe) order: the small cache paths before the text paths, so that on a
# device whose peak cannot be reset the cache paths' peaks are observed first.
MEASURE_ORDER = ("parallel_synthesis", "ps_floor", "torch_ps", "text", "text_floor", "torch_text")

# The targets (reported, never asserted).
TARGETS = {
  "prefill_speed_vs_torch": 1.0,  # ps_jax plain prefill tok/s / transformers' (bench_forward)
  "text_over_best_prefill": 1.2,  # text TTFT / min(text_floor, torch_text)
  "ps_over_torch_ps": 1.0,
  "ps_over_ps_floor": 1.3,
  # best text / PS at (N, L), per backend
  "best_text_over_ps": {"cpu": (4, 512, 15.0), "gpu": (8, 2048, 11.0)},
}


@dataclasses.dataclass(frozen=True)
class TTFTConfig:
  """What the TTFT benchmark measures (configs/bench_ttft.py documents the fields)."""

  num_branches: Sequence[int] = (2, 4, 8)
  branch_lengths: Sequence[int] = (128, 512, 2048)
  cells: Sequence[Sequence[int]] = ()  # explicit (N, L) pairs instead of the product
  question: str = "Which final answer do the agents support? Reply with the answer only."
  branch_source: str = "text"  # "text": English text (Python's pydoc topics) | "random" ids
  synth_prompt_tokens: int = 64  # without a tokenizer: random-id synthesizer prompt length
  repeats: int = 5
  min_repeats: int = 2
  path_budget_s: float = 30.0
  warmup: int = 1
  torch_reference: bool = True  # torch_text and torch_ps (need torch_model)
  memory: bool = True  # XLA memory plans, peak probes
  # Every ps_jax prefill: "blocks" (XLA, flash-style blocks of prefill_kv_block keys) or one
  # jax.nn.dot_product_attention call per chunk ("xla" | "cudnn"); 0 = the library's default.
  prefill_attention: str = "blocks"
  prefill_chunk: int = 0
  prefill_kv_block: int = 0
  compile_check_lengths: Sequence[int] = (400, 450, 500)  # branch lengths in one bucket
  compile_check_branches: int = 3
  parity_check: bool = True  # PS vs torch_ps first-token logits on this device
  # The bench_forward result whose prefill ratios the targets quote (recorded here; the
  # launcher reads it and passes it to `run` as forward_result).
  forward_json: str = ""
  adapter_seed: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.branch_source not in ("text", "random"):
      raise ValueError(f"branch_source={self.branch_source!r}; expected 'text' or 'random'")
    if self.prefill_attention not in ("blocks", "xla", "cudnn"):
      raise ValueError(f"prefill_attention={self.prefill_attention!r}; expected blocks|xla|cudnn")
    self.protocol  # validates repeats, min_repeats, warmup, budget  # noqa: B018
    self.prefill  # validates chunk and key block  # noqa: B018
    if not self.cells and (not self.num_branches or not self.branch_lengths):
      raise ValueError("num_branches and branch_lengths (or cells) must be non-empty")
    if min(n for n, _ in self.grid()) < 1 or min(n for _, n in self.grid()) < 1:
      raise ValueError("branch lengths and branch counts must be >= 1")

  @property
  def protocol(self) -> timing.Protocol:
    return timing.Protocol(
      self.repeats, self.min_repeats, self.warmup, self.path_budget_s, self.memory
    )

  @property
  def prefill(self) -> PrefillConfig:
    chunk = self.prefill_chunk or DEFAULT_PREFILL.chunk
    if self.prefill_attention == "blocks":
      kv_block = self.prefill_kv_block or DEFAULT_PREFILL.kv_block
      return PrefillConfig(chunk=chunk, kv_block=kv_block, implementation="xla")
    return PrefillConfig(chunk=chunk, kv_block=None, implementation=self.prefill_attention)

  def grid(self) -> list[tuple[int, int]]:
    """(N, L) cells, by L then N."""
    pairs = self.cells or [(n, x) for n in self.num_branches for x in self.branch_lengths]
    return sorted({(int(n), int(length)) for n, length in pairs}, key=lambda c: (c[1], c[0]))


def config_from_dict(d: Mapping[str, Any]) -> TTFTConfig:
  """TTFTConfig from a mapping (e.g. a ConfigDict's fields), ignoring unknown keys."""
  names = {f.name for f in dataclasses.fields(TTFTConfig)}
  kwargs = {}
  for k, v in d.items():
    if k in names:
      if isinstance(v, (list, tuple)):
        v = tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in v)
      kwargs[k] = v
  return TTFTConfig(**kwargs)


def run(
  model,
  tokenizer,
  config: TTFTConfig = TTFTConfig(),
  *,
  torch_model=None,
  adapter: Adapter | None = None,
  model_name: str = "",
  log: Callable[[str], None] = print,
  progress: bool = False,
  on_cell: Callable[[dict[str, Any]], None] | None = None,
  forward_result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Runs the grid; returns the result that `ttft_report.write` turns into JSON/markdown/PNG.
  `on_cell(partial result)` after each cell (e.g. to save what is measured so far);
  `forward_result`: a `forward.run` result (config.forward_json) whose plain-prefill ratios
  the targets quote."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  adapter = (
    adapter if adapter is not None else Adapter.create(model.config, seed=config.adapter_seed)
  )
  use_torch = config.torch_reference and torch_model is not None
  prefill, prefill_record = checks.select_prefill(model, config.prefill, seed=config.seed)
  if prefill_record.get("fallback"):
    log(f"prefill {config.prefill} failed; using {prefill}: {prefill_record['fallback']}")
  drivers = Drivers(
    model,
    tokenizer,
    adapter=adapter,
    prefill=prefill,
    torch_model=torch_model if use_torch else None,
  )
  result: dict[str, Any] = {
    "benchmark": "ttft",
    "model": model_name,
    "model_config": dataclasses.asdict(model.config),
    "dtype": str(model.dtype),
    "config": dataclasses.asdict(config),
    "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
    "environment": report.environment(**_torch_environment(torch_model)),
    "prefill": prefill_record,
    "parity": {},
    "cells": [],
  }
  # The compile check first: programs compiled earlier in the process would hide its counts.
  result["compile_check"] = checks.compile_check(drivers, config, log)
  if use_torch and config.parity_check:
    result["parity"] = _parity(drivers, tokenizer, config)
  result["forward_prefill"] = _forward_prefill(forward_result, config.forward_json)
  grid = config.grid()
  bar = tqdm(total=len(grid) * len(PATHS), desc="TTFT (cell, path)", disable=not progress)

  def say(text: str) -> None:  # log lines above the progress bar, not through it
    with bar.external_write_mode():
      log(text)

  for n, length in grid:
    bar.set_postfix_str(f"N={n} L={length}")
    result["cells"].append(_run_cell(drivers, config, n, length, say, bar.update))
    result["targets"] = targets(result)
    result["wall_s"] = time.perf_counter() - start
    if on_cell is not None:
      on_cell(result)
  bar.close()
  result["targets"] = targets(result)
  result["wall_s"] = time.perf_counter() - start
  return result


def _run_cell(drivers, config, n, length, say, advance) -> dict[str, Any]:
  """Measures one (N, L) cell; advance(k) moves the progress bar by k (cell, path) units."""
  model, tokenizer = drivers.model, drivers.tokenizer
  ids = inputs.branch_ids(model, tokenizer, length, config)
  prompts = inputs.prompts_for(model, tokenizer, n, config)
  text_ids = prompts.text_ids([ids] * n)
  branches = drivers.branches(ids, n)
  cell = _cell_header(n, ids, branches, prompts, text_ids, tokenizer, config)
  skipped = {}
  limit = model.config.max_position_embeddings
  if len(text_ids) + 1 > limit:
    reason = f"over context: {len(text_ids):,} prompt tokens + 1 > {limit:,} positions"
    skipped.update({k: reason for k in TEXT_PATHS})
  if drivers.torch_ps is None:
    skipped.update({k: "not run: no torch model" for k in TORCH_PATHS if k not in skipped})
  paths = _cell_paths(drivers, skipped, ids, n, prompts, text_ids, branches)
  advance(len(skipped))
  say(f"cell N={n} L={length}: text prompt {len(text_ids):,} tokens, synthesizer prompt "
      f"{len(prompts.latent)} tokens, branch bucket {cell['branch_bucket']}")  # fmt: skip
  load_before = _load()
  measured = timing.measure(paths, config.protocol, log=say, on_done=lambda _: advance(1))
  cell["load_average_1m"] = [load_before, _load()]
  for rec in measured.values():
    if rec["status"] == "ok":
      first = [o[0] if isinstance(o, list) else o for o in rec.pop("outputs")]
      rec["first_token"], rec["first_token_stable"] = first[0], len(set(first)) == 1
  cell["paths"] = {k: measured.get(k) or {"status": "skipped", "reason": skipped[k]} for k in PATHS}
  cell["ratios"] = ratios(cell["paths"])
  tokens = {k: p["first_token"] for k, p in cell["paths"].items() if p["status"] == "ok"}
  cell["first_tokens_agree"] = {
    group: len({tokens[k] for k in keys if k in tokens}) <= 1
    for group, keys in (
      ("text", TEXT_PATHS),
      ("ps", ("parallel_synthesis", "ps_floor", "torch_ps")),
    )
  }
  return cell


def _cell_paths(drivers, skipped, ids, n, prompts, text_ids, branches) -> dict[str, timing.Path]:
  """The cell's paths in MEASURE_ORDER, those not skipped."""
  out = {}
  for name in MEASURE_ORDER:
    if name in skipped or name in out:
      continue
    if name in ("parallel_synthesis", "ps_floor"):
      out["parallel_synthesis"], out["ps_floor"] = drivers.parallel_synthesis(
        branches, prompts.latent
      )
    elif name == "torch_ps":
      out[name] = drivers.torch_ps_path(ids, n, prompts.latent)
    else:
      out[name] = getattr(drivers, name)(text_ids)
  return {k: out[k] for k in MEASURE_ORDER if k in out}


def _cell_header(n, ids, branches, prompts, text_ids, tokenizer, config) -> dict[str, Any]:
  length = len(ids)
  cell: dict[str, Any] = {
    "num_branches": n,
    "branch_length": length,
    "branch_tokens": n * length,
    "branch_bucket": int(branches.caches.k.shape[2]),
    "branch_slots": int(branches.caches.k.shape[3]),
    "synth_prompt_tokens": len(prompts.latent),
    "text_prompt_tokens": len(text_ids),
    "ps_max_position": length + len(prompts.latent),
  }
  if tokenizer is not None:  # what re-tokenizing the decoded branch texts would have given
    texts = [tokenizer.decode(ids, skip_special_tokens=True)] * n
    messages = PromptTemplates().text_synthesizer_messages(config.question, texts)
    cell["library_text_prompt_tokens"] = len(generation.encode_prompts(tokenizer, [messages])[0])
  return cell


def _parity(drivers, tokenizer, config) -> dict[str, Any]:
  """torch_ps vs ps_jax PS on this device: three branches of different lengths."""
  lengths = (48, 32, 17)
  base = inputs.branch_ids(drivers.model, tokenizer, max(lengths), config)
  latent = inputs.prompts_for(drivers.model, tokenizer, len(lengths), config).latent
  return checks.torch_ps_parity(drivers, [base[:n] for n in lengths], latent)


def _torch_environment(torch_model) -> dict[str, Any]:
  if torch_model is None:
    return {}
  import torch  # pylint: disable=import-outside-toplevel

  device = next(torch_model.parameters()).device
  return {
    "torch_threads": torch.get_num_threads(),
    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    "torch_attn_implementation": getattr(torch_model.config, "_attn_implementation", None),
    "torch_device": str(device),
    "torch_device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
  }


def _load() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def _median(paths, name) -> float | None:
  p = paths.get(name) or {}
  return p["seconds"]["median"] if p.get("status") == "ok" else None


def _ratio(a, b):
  return None if a is None or b is None or b <= 0 else a / b


def ratios(paths: Mapping[str, Any]) -> dict[str, Any]:
  """Ratios of medians: PS against the best text path, and each path against its floor."""
  m = {k: _median(paths, k) for k in PATHS}
  text = {k: m[k] for k in TEXT_PATHS if m[k] is not None}
  best = min(text, key=text.get) if text else None
  prefills = [m[k] for k in ("text_floor", "torch_text") if m[k] is not None]
  ps = m["parallel_synthesis"]
  return {
    "best_text_path": best,
    "best_text_over_ps": _ratio(text.get(best), ps),
    "text_over_ps": {k: _ratio(v, ps) for k, v in text.items()},
    "text_over_text_floor": _ratio(m["text"], m["text_floor"]),
    "text_over_best_prefill": _ratio(m["text"], min(prefills) if prefills else None),
    "ps_over_ps_floor": _ratio(ps, m["ps_floor"]),
    "ps_over_torch_ps": _ratio(ps, m["torch_ps"]),
  }


def _forward_prefill(fwd: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
  """The prefill rows of a bench_forward result (tok/s ratios ps_jax / transformers)."""
  if not fwd:
    return {}
  ratios = (fwd.get("results") or {}).get("ratio_ps_jax_over_transformers") or {}
  rows = {
    k.split("_", 1)[1]: {
      "ratio": r["median"],
      "round_min": r["round_min"],
      "round_max": r["round_max"],
    }
    for k, r in ratios.items()
    if k.startswith("prefill_") and isinstance(r, Mapping)
  }
  return {"source": source, "time_utc": fwd["environment"].get("time_utc"), "rows": rows}


def targets(result: Mapping[str, Any]) -> dict[str, Any]:
  """Every target of issue 13 with its measured value and whether it is met (None: not
  measured in this run)."""
  cells = result["cells"]
  backend = result["environment"].get("jax_backend", "cpu")

  def worst(key, fn):
    vals = [(c["ratios"][key], c) for c in cells if c["ratios"].get(key) is not None]
    if not vals:
      return {"value": None, "met": None}
    v, c = fn(vals, key=lambda x: x[0])
    return {"value": v, "cell": [c["num_branches"], c["branch_length"]], "met": None}

  out: dict[str, Any] = {}
  rows = (result.get("forward_prefill") or {}).get("rows") or {}
  out["prefill_speed_vs_torch"] = {
    t: {**r, "met": r["ratio"] >= TARGETS["prefill_speed_vs_torch"]} for t, r in rows.items()
  }
  for key, fn, ok in (
    ("text_over_best_prefill", max, lambda v: v <= TARGETS["text_over_best_prefill"]),
    ("ps_over_torch_ps", max, lambda v: v <= TARGETS["ps_over_torch_ps"]),
    ("ps_over_ps_floor", max, lambda v: v <= TARGETS["ps_over_ps_floor"]),
  ):
    w = worst(key, fn)
    if w["value"] is not None:
      w["met"] = ok(w["value"])
    out[key] = {**w, "target": TARGETS[key]}
  out["best_text_over_ps"] = {}
  for where, (n, length, want) in TARGETS["best_text_over_ps"].items():
    entry: dict[str, Any] = {"num_branches": n, "branch_length": length, "target": want}
    cell = next((c for c in cells if (c["num_branches"], c["branch_length"]) == (n, length)), None)
    if where != backend:
      entry["status"] = f"not measured ({where} target; this run: {backend})"
    elif cell is None:
      entry["status"] = "cell not in this run"
    else:
      got = cell["ratios"]["best_text_over_ps"]
      entry.update(value=got, best_text_path=cell["ratios"]["best_text_path"])
      entry["status"] = "no text path ran" if got is None else ("met" if got >= want else "not met")
    out["best_text_over_ps"][where] = entry
  return out
