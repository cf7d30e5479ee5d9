"""The study: every (training mix, method, seed) trained and evaluated on held-out rows, resumable
per cell, and one report with means and 95% intervals over seeds and paired tests.

A *cell* is one trained method with one seed on one training mix ("base": the config's
data.sources; "distill": the same plus distillation rows made by the text synthesizer of the
base model, DESIGN.md 2.8 role (c), read through a `jsonl:` source), or the untrained methods
(zero-shot text, pcw) of one seed. Each cell is evaluated in every branch layout of
`study.branch_layouts` (heldout.BRANCH_LAYOUTS): "fixed" branches start at position 0 as in
training, "worker" branches sit after their worker prompt, where positional re-encoding
matters (no_reencode equals parallel_synthesis on "fixed" branches by construction). The text
methods read only the branch texts, so they are evaluated once, in the "fixed" layout, and
their numbers stand for every layout. Seed k sets the data seed (training and held-out rows), the
pipeline's shuffling seed and the adapter's initialisation seed; within a seed every method
sees the same rows in the same order, with the same optimizer and steps (launch.train's
fairness), and is scored on the same held-out rows, so methods pair by example.

Workdir layout:
  distill/distilled.jsonl          the distillation rows (resumable, ps_jax.train.distill)
  cells/<mix>/<method>/seed<k>/    train/ (checkpoints, metrics.jsonl, loss.png), adapter/,
                                   result.json
  cells/zero_shot/seed<k>/         result.json of the untrained methods
  <name>.json, <name>.md, <name>.png   the report (`write_study_report`)
A cell is finished when its result.json exists (written last, atomically): a rerun skips it.
An interrupted cell resumes its training from its newest checkpoint, then evaluates again.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from ps_jax.evals.stats import mean_ci, paired_bootstrap
from ps_jax.mapper import COEFFICIENTS, IDENTITY
from ps_jax.synthesis import METHOD_TABLE

MIXES = ("base", "distill")
ZERO_SHOT = "zero_shot"
RESULT_FILE = "result.json"
SIGNIFICANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Cell:
  mix: str  # "base" | "distill" | "zero_shot"
  method: str  # a trained method or variant, or "+"-joined untrained methods (zero-shot cell)
  seed: int
  directory: str

  @property
  def methods(self) -> tuple[str, ...]:
    return tuple(self.method.split("+"))

  @property
  def name(self) -> str:
    return f"{self.mix}/{self.method}/seed{self.seed}"

  @property
  def result_path(self) -> str:
    return os.path.join(self.directory, RESULT_FILE)

  def done(self) -> bool:
    return os.path.exists(self.result_path)


def variant(c, name: str) -> tuple[str, dict]:
  """(the method, adapter overrides) that `name` of study.methods trains: a trained method of
  METHOD_TABLE as it is, or a variant of `study.variants` (e.g. the mapper's metadata features
  or the per-head mapper: parallel_synthesis with other adapter settings)."""
  variants = c.study.get("variants", {})
  if name in variants:
    v = variants[name]
    return v.method, dict(v.get("adapter", {}))
  return name, {}


def base_method(c, name: str) -> str:
  return variant(c, name)[0]


def check_study_config(c) -> None:
  """Raises ValueError naming the field for a study config that cannot run."""
  s = c.study
  from ps_jax.train.loop import AdapterConfig  # pylint: disable=import-outside-toplevel

  adapter_fields = {f.name for f in dataclasses.fields(AdapterConfig)}
  for name, v in s.get("variants", {}).items():
    if name in METHOD_TABLE:
      raise ValueError(f"study.variants.{name}: the name of a method; give the variant its own")
    if v.get("method") not in METHOD_TABLE or not METHOD_TABLE[v.method].trainable:
      raise ValueError(f"study.variants.{name}.method={v.get('method')!r} is not a trained method")
    unknown = set(v.get("adapter", {})) - adapter_fields
    if unknown:
      raise ValueError(
        f"study.variants.{name}.adapter: unknown fields {sorted(unknown)} "
        f"(AdapterConfig has {sorted(adapter_fields)})"
      )
  for m in s.methods:
    m = base_method(c, m)
    if m not in METHOD_TABLE or not METHOD_TABLE[m].trainable:
      raise ValueError(
        f"study.methods: {m!r} is not a trained method "
        f"({[k for k, v in METHOD_TABLE.items() if v.trainable]}) or a study.variants name"
      )
  for m in s.zero_shot:
    if m not in METHOD_TABLE or METHOD_TABLE[m].trainable:
      raise ValueError(
        f"study.zero_shot: {m!r} is not an untrained method "
        f"({[k for k, v in METHOD_TABLE.items() if not v.trainable]})"
      )
  if not s.methods and not s.zero_shot:
    raise ValueError("study.methods and study.zero_shot are both empty")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise ValueError(f"study.seeds={tuple(s.seeds)} must be distinct and non-empty")
  if not s.mixes or any(m not in MIXES for m in s.mixes):
    raise ValueError(f"study.mixes={tuple(s.mixes)}: expected a non-empty subset of {MIXES}")
  from ps_jax.train.heldout import BRANCH_LAYOUTS  # pylint: disable=import-outside-toplevel

  layouts = _layouts(c)
  if not layouts or layouts[0] != "fixed" or any(x not in BRANCH_LAYOUTS for x in layouts):
    raise ValueError(
      f"study.branch_layouts={layouts}: expected 'fixed' first, then others of {BRANCH_LAYOUTS}"
    )


def plan(c, workdir: str) -> list[Cell]:
  """Every cell of the study, in run order: per seed the zero-shot cell, then per mix the
  trained methods (and the variants listed for that mix)."""
  s = c.study
  cells = []
  for seed in s.seeds:
    if s.zero_shot:
      cells.append(
        Cell(
          ZERO_SHOT,
          "+".join(s.zero_shot),
          int(seed),
          os.path.join(workdir, "cells", ZERO_SHOT, f"seed{seed}"),
        )
      )
    for mix in s.mixes:
      for m in s.methods:
        if mix not in s.get("variants", {}).get(m, {}).get("mixes", (mix,)):
          continue  # a variant trained in some mixes only
        cells.append(Cell(mix, m, int(seed), os.path.join(workdir, "cells", mix, m, f"seed{seed}")))
  return cells


def machine() -> dict:
  """What the study ran on (for the report)."""
  import jax  # pylint: disable=import-outside-toplevel

  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count()
  return {
    "cpu": cpu,
    "cpu_cores": cores,
    "devices": sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()}),
    "device_count": jax.device_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
  }


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)  # a reader (or a rerun) never sees a half-written file


def _data_config(c, seed: int, sources: Sequence[str]):
  d = ml_collections.ConfigDict(c.data.to_dict())
  d.seed = int(seed)
  d.sources = tuple(sources)
  return d


def distill_rows(c, model, tokenizer, workdir: str, log: Callable[[str], None] = print) -> str:
  """The distillation rows' JSONL: `distill.path` if set (made by launch.distill), else made
  here (resumable) with the base model's greedy text synthesizer as the teacher. Raises if it
  holds no rows: a "distill" cell would otherwise train on the base rows under that name."""
  from ps_jax.experiment import distill_config  # pylint: disable=import-outside-toplevel
  from ps_jax.train import distill as distill_lib  # pylint: disable=import-outside-toplevel

  d = c.distill
  if d.path:
    if not os.path.isfile(d.path):
      raise FileNotFoundError(f"distill.path={d.path!r} does not exist")
    return _nonempty(d.path, "distill.path")
  output = os.path.join(workdir, "distill", "distilled.jsonl")
  cfg = distill_config(d)
  syn = d.synthetic
  nb = syn.num_branches if isinstance(syn.num_branches, int) else tuple(syn.num_branches)
  inputs, _ = distill_lib.load_inputs(
    d.input,
    split="train",
    per_family=syn.per_family,
    seed=syn.seed,
    num_branches=nb,
    difficulty=syn.difficulty,
  )
  settings = {"input": d.input, "synthetic": syn.to_dict(), "model": c.model.to_dict()}
  stats = distill_lib.distill(
    model, tokenizer, inputs, cfg, output, settings=json.loads(json.dumps(settings))
  )
  log(f"distillation rows {output}: {stats}")
  return _nonempty(output, "distill.synthetic.per_family")


def _nonempty(path: str, field: str) -> str:
  if not count_rows(path):
    raise ValueError(
      f"the distillation rows {path!r} hold no rows (check {field}): the distill mix would "
      "train on the base rows alone"
    )
  return path


def count_rows(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def teacher_scores(path: str) -> dict:
  """How often the distillation teacher is right: its answers scored by the family scorers
  against the reference answers the rows keep (meta.distill.reference_answer); rows without a
  reference or a known family are counted as unscored, not guessed."""
  from ps_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  per_family: dict[str, dict[str, int]] = {}
  unscored = 0
  with open(path) as f:
    for line in filter(str.strip, f):
      row = json.loads(line)
      meta = row.get("meta", {})
      family, reference = meta.get("family"), meta.get("distill", {}).get("reference_answer")
      if reference is None or family not in synthetic.FAMILIES:
        unscored += 1
        continue
      counts = per_family.setdefault(family, {"correct": 0, "rows": 0})
      counts["rows"] += 1
      counts["correct"] += int(synthetic.score(family, row["answer"], str(reference)) == 1.0)
  return {
    "correct": sum(c["correct"] for c in per_family.values()),
    "scored": sum(c["rows"] for c in per_family.values()),
    "unscored": unscored,
    "per_family": per_family,
  }


def _scorer(row, text) -> float:
  from ps_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  return synthetic.score(row.meta["family"], text, row.answer)


def _eval_record(evaluated: dict) -> dict:
  keep = (
    "accuracy",
    "accuracy_ci95",
    "per_group",
    "per_group_ci95",
    "group_sizes",
    "per_kind",
    "kind_sizes",
    "per_example",
    "ttft_median_s",
    "num_examples",
    "max_new_tokens",
  )
  return {k: evaluated[k] for k in keep if k in evaluated}


class Preempted(RuntimeError):
  """A SIGTERM stopped a cell's training after a checkpoint; the same command resumes it."""


def run_cell(cell: Cell, c, model, tokenizer, rows, log: Callable[[str], None] = print) -> dict:
  """Trains (unless zero-shot) and evaluates one cell; writes and returns its result.json."""
  from ps_jax.adapter import save_adapter  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import train_config, write_run_config  # pylint: disable=import-outside-toplevel
  from ps_jax.train.heldout import evaluate_methods  # pylint: disable=import-outside-toplevel
  from ps_jax.train.loop import train  # pylint: disable=import-outside-toplevel

  os.makedirs(cell.directory, exist_ok=True)
  start = time.perf_counter()
  record: dict = {"mix": cell.mix, "method": cell.method, "seed": cell.seed}
  # A variant trains and evaluates its method; its numbers are recorded under its own name.
  method, adapter_overrides = variant(c, cell.method)
  methods = cell.methods if cell.mix == ZERO_SHOT else (method,)
  adapters = dict.fromkeys(methods)
  if cell.mix != ZERO_SHOT:
    base = train_config(c)
    cfg = dataclasses.replace(
      base,
      method=method,
      pipeline=dataclasses.replace(base.pipeline, seed=cell.seed),
      adapter=dataclasses.replace(base.adapter, seed=cell.seed, **adapter_overrides),
    )
    overrides = {"data.seed": cell.seed, "pipeline.seed": cell.seed, "adapter.seed": cell.seed}
    overrides |= {f"adapter.{k}": v for k, v in adapter_overrides.items()}
    run_config = _with(c, overrides, mix=cell.mix)
    write_run_config(run_config, os.path.join(cell.directory, "train"), method)
    result = train(
      model,
      tokenizer,
      rows.train,
      rows.heldout,
      cfg,
      os.path.join(cell.directory, "train"),
      row_stats=rows.stats,
    )
    if result.preempted:  # a part-trained adapter must not be evaluated as the cell's result
      raise Preempted(
        f"cell {cell.name}: preempted after step {result.last_step} (checkpoint saved); "
        "rerun the same command to resume"
      )
    save_adapter(result.adapter, os.path.join(cell.directory, "adapter"))
    adapters[method] = result.adapter
    history = result.history
    record["train"] = {
      "steps": result.last_step,
      "final_loss": history[-1]["loss"] if history else None,
      "eval_loss": next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None),
      "step_s_sum": float(sum(r.get("step_s", 0.0) for r in history)),
      "step_s_median": float(np.median([r["step_s"] for r in history])) if history else None,
      "rows": len(rows.train),
      "skipped": {k: v for k, v in history[-1].items() if k.startswith("skipped/")}
      if history
      else {},
      "mapper_offset": mapper_offset(result.adapter.mapper),
    }
  record["train_wall_s"] = time.perf_counter() - start
  eval_start = time.perf_counter()
  record["eval"], accs = {}, []
  for layout in _layouts(c):
    read = [m for m in methods if layout == "fixed" or METHOD_TABLE[m].reads == "cache"]
    if not read:
      continue  # text methods: the same in every layout
    evaluated = evaluate_methods(
      model,
      tokenizer,
      rows.heldout,
      scorer=_scorer,
      methods=read,
      adapter=adapters,
      max_new_tokens=c.eval.max_new_tokens,
      batch_size=c.eval.batch_size,
      group=lambda r: r.meta["family"],
      bootstrap_resamples=1000,
      branch_layout=layout,
    )
    record["eval"][layout] = _relabel(_eval_record(evaluated), method, cell.method)
    accs += [f"{m} {100 * a:.1f} ({layout})" for m, a in record["eval"][layout]["accuracy"].items()]
  record["eval_wall_s"] = time.perf_counter() - eval_start
  record["wall_s"] = time.perf_counter() - start
  record["leak_ok"] = bool(rows.leak["ok"])
  record["machine"] = machine()  # cells of one study may run on different machines
  _write_json(cell.result_path, record)
  log(f"cell {cell.name}: {', '.join(accs)}; {record['wall_s']:.0f} s")
  return record


def mapper_offset(mapper) -> dict | None:
  """How far a trained mapper moved from the identity: max and mean |coefficient - identity| per
  coefficient (alpha_k, beta_k, alpha_v, beta_v; each bounded by 0.1) over every layer, KV head
  and a grid of 1-4 branches of 8-512 tokens. None without a mapper."""
  if mapper is None:
    return None
  lengths = np.array([[n] * k + [0] * (4 - k) for k in range(1, 5) for n in (8, 32, 128, 512)])
  coefs = np.asarray(mapper.coefficients(jnp.asarray(lengths)))  # [L, 16, 4, K, 4]
  valid = (lengths > 0)[None, :, :, None]  # [1, 16, 4, 1]
  offset = np.abs(coefs - np.array(IDENTITY))[np.broadcast_to(valid, coefs.shape[:-1])]
  return {
    "max": dict(zip(COEFFICIENTS, offset.max(0).tolist(), strict=True)),
    "mean": dict(zip(COEFFICIENTS, offset.mean(0).tolist(), strict=True)),
  }


def _relabel(evaluation: dict, method: str, name: str) -> dict:
  """`evaluation` with the per-method entries of `method` keyed by `name` (a variant's)."""
  if method == name:
    return evaluation
  out = dict(evaluation)
  for key in (
    "accuracy",
    "accuracy_ci95",
    "per_group",
    "per_group_ci95",
    "per_kind",
    "ttft_median_s",
  ):
    if key in out:
      out[key] = {name if m == method else m: v for m, v in out[key].items()}
  per = dict(out["per_example"])
  for key in ("scores", "outputs"):
    if key in per:
      per[key] = {name if m == method else m: v for m, v in per[key].items()}
  out["per_example"] = per
  return out


def _with(c, overrides: dict, mix: str):
  """A copy of config `c` with dotted-key overrides (the cell's seeds), for its config.json."""
  d = ml_collections.ConfigDict(c.to_dict())
  for key, value in overrides.items():
    section, name = key.split(".")
    d[section][name] = value
  d.study.mixes = (mix,)
  return d


def _layouts(c) -> tuple[str, ...]:
  return tuple(c.study.get("branch_layouts", ("fixed",)))


def run_study(
  c, workdir: str, log: Callable[[str], None] = print, *, report_only: bool = False
) -> dict:
  """Runs every unfinished cell of the study config `c` in `workdir`, then writes the report
  (with `report_only`, only writes the report from the cells finished so far).

  Returns {"ran": [cell names], "skipped": [cell names already finished], "paths": report
  files, "report": the report dict}.
  """
  from ps_jax.experiment import build_model, build_rows, train_config  # pylint: disable=import-outside-toplevel

  check_study_config(c)
  train_config(c)  # validates the training sections before anything runs
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json_best_effort(indent=1))
  cells = plan(c, workdir)
  todo = [] if report_only else [cell for cell in cells if not cell.done()]
  skipped = [cell.name for cell in cells if cell.done()]
  for name in skipped:
    log(f"cell {name}: finished earlier, skipped")
  ran = []
  if todo:
    model, tokenizer = build_model(c.model)
    distill_path = None
    if any(cell.mix == "distill" for cell in todo):
      distill_path = distill_rows(c, model, tokenizer, workdir, log)
    base_sources = (c.data.sources,) if isinstance(c.data.sources, str) else c.data.sources
    sources = {"base": tuple(base_sources), ZERO_SHOT: tuple(base_sources)}
    if distill_path is not None:
      sources["distill"] = (*base_sources, f"jsonl:{distill_path}")
    cache: dict = {}
    for cell in todo:
      key = (cell.mix, cell.seed)
      if key not in cache:
        cache.clear()  # one mix and seed at a time (cells are ordered by seed, then mix)
        cache[key] = build_rows(_data_config(c, cell.seed, sources[cell.mix]))
      run_cell(cell, c, model, tokenizer, cache[key], log)
      ran.append(cell.name)
  report = summarize(c, cells)
  report["wall"] = {
    "this_run_s": time.perf_counter() - start,
    "cells_total_s": float(sum(r["wall_s"] for r in report["cells"] if r.get("wall_s"))),
  }
  report["machine"] = machine()
  if "distill" in c.study.mixes:
    path = c.distill.path or os.path.join(workdir, "distill", "distilled.jsonl")
    report["distill_rows"] = {
      "path": c.distill.path or os.path.relpath(path, workdir),  # no machine path when made here
      "rows": count_rows(path) if os.path.isfile(path) else None,
      "teacher": teacher_scores(path) if os.path.isfile(path) else None,
    }
  paths = write_study_report(report, workdir, name=c.study.report_name)
  return {"ran": ran, "skipped": skipped, "paths": paths, "report": report}


# ---------------------------------------------------------------------------- aggregation


def _load(cell: Cell) -> dict | None:
  if not cell.done():
    return None
  with open(cell.result_path) as f:
    return json.load(f)


def _pooled(evals: dict[int, dict], method: str) -> dict[str, float]:
  """{seed/example id: score} of `method` over the seeds of `evals` ({seed: evaluation})."""
  out = {}
  for seed, ev in evals.items():
    per = ev["per_example"]
    for i, s in zip(per["ids"], per["scores"][method], strict=True):
      out[f"{seed}/{i}"] = s
  return out


def _paired(label, a_evals, a, b_evals, b, resamples) -> dict | None:
  """Paired tests of A - B over the seeds both have ({seed: evaluation} each): the bootstrap
  over the pooled examples, and the mean over seeds of the per-seed accuracy differences with
  its t interval."""
  seeds = sorted(set(a_evals) & set(b_evals))
  if not seeds:
    return None
  sa = _pooled({s: a_evals[s] for s in seeds}, a)
  sb = _pooled({s: b_evals[s] for s in seeds}, b)
  test = paired_bootstrap(sa, sb, n=resamples)
  diffs = [a_evals[s]["accuracy"][a] - b_evals[s]["accuracy"][b] for s in seeds]
  seed_level = mean_ci(diffs)
  lo, hi = seed_level["ci95"]
  return {
    "view": label,
    "a": a,
    "b": b,
    "seeds": seeds,
    **test,
    "significant": test["p_value"] < SIGNIFICANCE,
    "seed_level": {**seed_level, "diffs": diffs},
    "seed_level_significant": bool(not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)),
  }


def _method_summary(evals: dict[int, dict], m: str) -> dict:
  """mean_ci over seeds of `m`'s accuracy, per family and per generalization kind."""
  evs = [evals[k] for k in sorted(evals)]
  families = sorted({g for e in evs for g in e["per_group"][m]})
  kinds = sorted({k for e in evs for k in e.get("per_kind", {}).get(m, {})})
  return {
    "seeds": sorted(evals),
    "accuracy": mean_ci([e["accuracy"][m] for e in evs]),
    "per_family": {
      g: mean_ci([e["per_group"][m][g] for e in evs if g in e["per_group"][m]]) for g in families
    },
    "per_kind": {
      k: mean_ci([e["per_kind"][m][k] for e in evs if k in e.get("per_kind", {}).get(m, {})])
      for k in kinds
    },
    # Per machine: a GPU's milliseconds and a CPU's seconds are not one distribution.
    "ttft_median_s": {
      on: float(np.median([e["ttft_median_s"][m] for e in evs if e["ran_on"] == on]))
      for on in sorted({e["ran_on"] for e in evs})
    },
    "num_examples": [e["num_examples"] for e in evs],
  }


def view_name(mix: str, layout: str) -> str:
  return f"{mix} / {layout} branches"


def _ran_on(mach: dict | None) -> str:
  """A cell's machine in a few words: its accelerator, else its CPU; and its jax."""
  if not mach:
    return "not recorded"  # cells written before cells recorded their machine
  accelerators = sorted({d.split(":", 1)[1] for d in mach["devices"] if not d.startswith("cpu:")})
  name = ", ".join(accelerators) or f"{mach['cpu']} CPU, {mach['cpu_cores']} cores"
  return f"{name}, jax {mach['jax']}"


def _fmt_ttft(per_machine: dict[str, float]) -> str:
  """Milliseconds; the machine named where the seeds ran on several."""
  if len(per_machine) == 1:
    return f"{1e3 * next(iter(per_machine.values())):.0f}"
  return "; ".join(f"{1e3 * t:.0f} ({on.split(', jax')[0]})" for on, t in per_machine.items())


def _cells_per_machine(rows) -> dict[str, int]:
  return dict(collections.Counter(r["ran_on"] for r in rows if "ran_on" in r))


def summarize(c, cells: Sequence[Cell], resamples: int = 10000) -> dict:
  """The study's numbers from the finished cells' result.json files.

  One *view* per (training mix, branch layout). Per view and method: accuracy (mean over
  families) as mean_ci over seeds, and the same per family and per generalization kind.
  Paired tests (`_paired`) per view: parallel_synthesis (or the first trained method) against
  every other method; and each trained method with distillation rows against without.
  """
  s = c.study
  layouts = _layouts(c)
  evals: dict = collections.defaultdict(dict)  # (mix, layout, method) -> {seed: evaluation}
  rows = []
  for cell in cells:
    rec = _load(cell)
    row = {"cell": cell.name, "status": "done" if rec else "missing"}
    if rec is not None:
      row.update({k: rec[k] for k in ("wall_s", "train_wall_s", "eval_wall_s") if k in rec})
      row["ran_on"] = _ran_on(rec.get("machine"))
      if "train" in rec:
        row["train"] = rec["train"]
    rows.append(row)
    if rec is None:
      continue
    for m in cell.methods:
      for mix in s.mixes if cell.mix == ZERO_SHOT else (cell.mix,):
        for layout in layouts:
          # Text methods are evaluated in the fixed layout only: the same in every layout.
          source = layout if METHOD_TABLE[base_method(c, m)].reads == "cache" else "fixed"
          if source in rec["eval"]:
            evals[mix, layout, m][cell.seed] = dict(rec["eval"][source], ran_on=row["ran_on"])
  methods = [*s.zero_shot, *s.methods]
  reference = "parallel_synthesis" if "parallel_synthesis" in s.methods else None
  reference = reference or (s.methods[0] if s.methods else None)
  summary, paired = {}, []
  for mix in s.mixes:
    for layout in layouts:
      view = view_name(mix, layout)
      summary[view] = {
        m: _method_summary(evals[mix, layout, m], m) for m in methods if evals[mix, layout, m]
      }
      for b in methods:
        if reference is None or b == reference:
          continue
        t = _paired(
          view, evals[mix, layout, reference], reference, evals[mix, layout, b], b, resamples
        )
        if t is not None:
          paired.append(t)
  if set(MIXES) <= set(s.mixes):
    for layout in layouts:
      for m in s.methods:
        t = _paired(
          f"distill - base / {layout} branches",
          evals["distill", layout, m],
          m,
          evals["base", layout, m],
          m,
          resamples,
        )
        if t is not None:
          paired.append(t)
  return {
    "methods": methods,
    "mixes": list(s.mixes),
    "branch_layouts": list(layouts),
    "seeds": list(s.seeds),
    "reference": reference,
    "summary": summary,
    "paired": paired,
    "cells": rows,
    "finished": sum(r["status"] == "done" for r in rows),
    "planned": len(rows),
    "config": json.loads(c.to_json_best_effort()),
  }


# ---------------------------------------------------------------------------- report


def _fmt(ci: dict | None) -> str:
  if not ci or ci.get("n", 0) == 0 or math.isnan(ci["mean"]):
    return "-"
  lo, hi = ci["ci95"]
  if math.isnan(lo):
    return f"{100 * ci['mean']:.1f} (n={ci['n']})"
  return f"{100 * ci['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt_diff(ci: dict) -> str:
  if ci.get("n", 0) == 0 or math.isnan(ci["mean"]):
    return "-"
  lo, hi = ci["ci95"]
  if math.isnan(lo):
    return f"{100 * ci['mean']:+.1f} (n={ci['n']})"
  return f"{100 * ci['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _duration(seconds: float) -> str:
  h, rem = divmod(int(round(seconds)), 3600)
  return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _distill_rows_line(rows: dict) -> str:
  line = (
    f"- distillation rows (teacher: the base model's text synthesizer): {rows['rows']} in "
    f"{os.path.basename(rows['path'])}"
  )
  teacher = rows.get("teacher")
  if teacher and teacher["scored"]:
    families = ", ".join(
      f"{f} {c['correct']}/{c['rows']}" for f, c in teacher["per_family"].items()
    )
    line += (
      f"; the teacher's answer is right (family scorers against the reference answers) on "
      f"{teacher['correct']} of {teacher['scored']} ({families}): the distill mix distils "
      "those answers, right or wrong"
    )
  return line


def write_study_report(report: dict, directory: str, *, name: str = "study") -> dict[str, str]:
  """Writes NAME.json (everything), NAME.md (tables of means and 95% intervals over seeds,
  paired tests, significant differences, machine and wall time) and NAME.png (accuracy per
  family and method with the intervals as error bars, one panel per training mix and branch
  layout)."""
  os.makedirs(directory, exist_ok=True)
  paths = {ext: os.path.join(directory, f"{name}.{ext}") for ext in ("json", "md", "png")}
  _write_json(paths["json"], report)
  mach, wall = report.get("machine", {}), report.get("wall", {})
  lines = [
    "# Study: Parallel-Synthesis against the trained text baseline and the ablations",
    "",
    *(
      [
        f"**Interim report: {report['finished']} of {report['planned']} cells finished.** "
        "Methods and views with fewer seeds than planned have wider intervals or none; the "
        "missing cells are listed at the end.",
        "",
      ]
      if report["finished"] < report["planned"]
      else []
    ),
    f"- cells finished: {report['finished']} of {report['planned']}; seeds "
    f"{report['seeds']}; training mixes {report['mixes']}; branch layouts "
    f"{report.get('branch_layouts')} (fixed: from position 0, as in training; worker: after "
    "the worker prompt; text methods read only texts and are shared by every layout)",
    f"- machine of this report's run: {mach.get('cpu', '?')}, {mach.get('cpu_cores', '?')} "
    f"cores, devices {', '.join(mach.get('devices', []))}; jax {mach.get('jax', '?')}",
    "- cells per machine they ran on: "
    + "; ".join(f"{m}: {n}" for m, n in _cells_per_machine(report["cells"]).items()),
    *(
      [_distill_rows_line(report["distill_rows"])]
      if report.get("distill_rows", {}).get("rows") is not None
      else ["- distillation rows: not made yet"]
      if "distill_rows" in report
      else []
    ),
    f"- wall time: {_duration(wall.get('cells_total_s', 0.0))} over all cells (sum of the "
    f"cells' own runs); this invocation {_duration(wall.get('this_run_s', 0.0))}",
    "",
    "Accuracy in %: the mean over seeds of each seed's held-out accuracy (mean over "
    "families), with a Student-t 95% interval over seeds (`stats.mean_ci`; `(n=1)`: one seed, "
    "no interval). Zero-shot methods (no training) are the same in every mix. TTFT: the "
    "median over seeds of each cell's median synthesizer TTFT, per machine where the seeds ran "
    "on several.",
  ]
  for view, per_method in report["summary"].items():
    kinds = sorted({k for v in per_method.values() for k in v["per_kind"]})
    families = sorted({g for v in per_method.values() for g in v["per_family"]})
    lines += [
      "",
      f"## Training mix / branch layout: {view}",
      "",
      "| method | seeds | mean over families | " + " | ".join(kinds) + " | TTFT (ms) |",
      "|---" * (len(kinds) + 4) + "|",
    ]
    for m, v in per_method.items():
      cells = [_fmt(v["per_kind"].get(k)) for k in kinds]
      lines.append(
        f"| {m} | {len(v['seeds'])} | **{_fmt(v['accuracy'])}** | "
        + " | ".join(cells)
        + f" | {_fmt_ttft(v['ttft_median_s'])} |"
      )
    lines += [
      "",
      "| family | " + " | ".join(per_method) + " |",
      "|---" * (len(per_method) + 1) + "|",
    ]
    for g in families:
      lines.append(
        f"| {g} | " + " | ".join(_fmt(v["per_family"].get(g)) for v in per_method.values()) + " |"
      )
  if report["paired"]:
    lines += [
      "",
      "## Paired tests",
      "",
      "Paired bootstrap over the held-out examples of all seeds (the same examples for A and "
      "B), and the mean over seeds of the per-seed accuracy differences with its 95% t "
      "interval. Significant: p < 0.05 (bootstrap), or a seed-level interval that excludes 0.",
      "",
      "| training mix / branch layout | A - B | diff (points) | bootstrap 95% CI | p "
      "| significant | seed-level diff [95% CI] | seed-level significant |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for t in report["paired"]:
      sl = t["seed_level"]
      lines.append(
        f"| {t['view']} | {t['a']} - {t['b']} | {100 * t['diff']:+.1f} | "
        f"[{100 * t['ci95'][0]:+.1f}, {100 * t['ci95'][1]:+.1f}] | {t['p_value']:.4f} | "
        f"{'yes' if t['significant'] else 'no'} | {_fmt_diff(sl)} | "
        f"{'yes' if t['seed_level_significant'] else 'no'} |"
      )
    sig = [t for t in report["paired"] if t["significant"]]
    lines += ["", "Significant differences (bootstrap p < 0.05):"]
    lines += [
      f"- {t['view']}: {t['a']} {'>' if t['diff'] > 0 else '<'} {t['b']} "
      f"({100 * t['diff']:+.1f} points, p = {t['p_value']:.4f})"
      for t in sig
    ] or ["- none"]
  lines += [
    "",
    "## Cells",
    "",
    "Mapper offset: the trained mapper's largest |coefficient - identity| (`mapper_offset`; "
    "tanh bounds it at 0.1; blank without a mapper or for cells run before it was recorded).",
    "",
    "| cell | status | train steps | final loss | mapper offset | wall (s) | ran on |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in report["cells"]:
    tr = r.get("train", {})
    loss = "" if tr.get("final_loss") is None else f"{tr['final_loss']:.3f}"
    offset = tr.get("mapper_offset")
    offset = "" if offset is None else f"{max(offset['max'].values()):.4f}"
    wall_s = "" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
    steps = tr.get("steps", "")
    line = f"| {r['cell']} | {r['status']} | {steps} | {loss} | {offset} | {wall_s} |"
    lines.append(f"{line} {r.get('ran_on', '')} |")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  _plot(report, paths["png"])
  return paths


def _plot(report: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  views = list(report["summary"]) or ["(none)"]
  fig = Figure(figsize=(11, 3.6 * len(views)))
  axes = fig.subplots(len(views), 1, squeeze=False)[:, 0]
  # One colour per method in every view: tab10's hues (tab20's even entries), then their light
  # shades (the default cycle would repeat after 10 methods).
  methods = list(dict.fromkeys(m for v in report["summary"].values() for m in v))
  tab20 = matplotlib.colormaps["tab20"]
  colors = {m: tab20((2 * i) % 20 + (i // 10) % 2) for i, m in enumerate(methods)}
  for ax, view in zip(axes, views, strict=True):
    per_method = report["summary"].get(view, {})
    families = sorted({g for v in per_method.values() for g in v["per_family"]})
    labels = [*families, "mean"]
    x = np.arange(len(labels))
    width = 0.8 / max(len(per_method), 1)
    for i, (m, v) in enumerate(per_method.items()):
      cis = [v["per_family"].get(g) for g in families] + [v["accuracy"]]
      means = np.array([c["mean"] if c else np.nan for c in cis]) * 100
      lo = np.array([c["ci95"][0] if c else np.nan for c in cis]) * 100
      hi = np.array([c["ci95"][1] if c else np.nan for c in cis]) * 100
      err = np.nan_to_num(np.clip(np.array([means - lo, hi - means]), 0, None))
      ax.bar(
        x + i * width, np.nan_to_num(means), width, yerr=err, capsize=2, label=m, color=colors[m]
      )
    ax.set_xticks(x + width * (len(per_method) - 1) / 2)
    ax.set_xticklabels(labels, rotation=15, fontsize="small")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{view} (mean over seeds, 95% t interval)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
