r"""Run an agent workflow (workers with tools -> branches -> a judger per method) and report it.

  python -m launch.agent --config configs/agent.py:marble --workdir workdir/agent_marble

Writes WORKDIR/cases/<id>.json per case (skipped when present: rerunning resumes), failures to
WORKDIR/errors.jsonl (retried on rerun), and the report agent.md / agent.json / agent.png.
See configs/agent.py for the presets (marble, tiny, gaia_files, gaia) and the fixed-trajectory
mode.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags

flags.DEFINE_string("workdir", None, "Output directory (resumable).", required=True)
config_flags.DEFINE_config_file("config", None, "Agent workflow config file.", lock_config=True)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _select(items, c, key):
  if c.case_ids:
    by_id = {str(key(x)): x for x in items}
    missing = [i for i in c.case_ids if str(i) not in by_id]
    if missing:
      raise ValueError(f"config.case_ids: no case with id {missing}")
    items = [by_id[str(i)] for i in c.case_ids]
  return items if c.limit < 0 else items[: c.limit]


def _machine() -> str:
  import jax  # pylint: disable=import-outside-toplevel

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = f"{names[0]} x {len(names)}" if names else cpu
  except OSError:
    pass
  return f"{cpu}; jax {jax.__version__} on {jax.devices()[0].platform}"


def summarize(records, methods, chance=None) -> dict:
  """Accuracy (Wilson 95%) by each scorer, MARBLE's task score, TTFT, per method."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from ps_jax.evals.stats import wilson_interval  # pylint: disable=import-outside-toplevel

  def median(xs):
    return float(np.median(xs)) if xs else None

  def mean(xs):
    return float(np.mean(xs)) if xs else None

  def rate(flags_):
    n_ok = sum(bool(x) for x in flags_)
    return dict(
      correct=n_ok,
      scored=len(flags_),
      accuracy=n_ok / len(flags_) if flags_ else None,
      accuracy_ci95=list(wilson_interval(float(n_ok), len(flags_))) if flags_ else None,
    )

  out = {"cases": len(records), "methods": {}}
  for m in methods:
    rows = [r["methods"][m] for r in records]
    scores = [x["score"] for x in rows if x["score"].get("correct") is not None]
    entry = rate([s["correct"] for s in scores])
    if any("correct_official" in s for s in scores):
      entry["official"] = rate([s["correct_official"] for s in scores])
    if any("task_score" in s for s in scores):
      entry["avg_task_score"] = mean([s["task_score"] for s in scores])
      entry["avg_predicted"] = mean([len(s["predicted_root_causes"]) for s in scores])
    entry.update(
      ttft_median_s=median([x["ttft_s"] for x in rows]),
      cache_prepare_median_s=median([x["cache_prepare_s"] for x in rows]),
      judger_turns_mean=mean([len(x["turn_ttft_s"]) for x in rows]),
      prompt_tokens_mean=mean([x["prompt_tokens"] for x in rows]),
      adapter=rows[0]["adapter"] if rows else None,
    )
    out["methods"][m] = entry
  text = out["methods"].get("text", {}).get("ttft_median_s")
  for s in out["methods"].values():
    s["ttft_speedup_vs_text"] = text / s["ttft_median_s"] if text and s["ttft_median_s"] else None
  turns = [t for r in records for t in r["workers"].get("turn_times", [])]
  warm = [t["ttft_s"] for t in turns if not t["compiled"]]
  agents = [a for r in records for a in r["workers"]["agents"]]
  tool_counts = collections.Counter()
  for a in agents:
    tool_counts.update(a["counts"])
  out["workers"] = dict(
    turn_ttft_median_s=median(warm),
    turns_timed=len(warm),
    turns_compiled=len(turns) - len(warm),
    steps_mean=mean([len(a["steps"]) for a in agents]),
    stop_reasons=dict(collections.Counter(a["stop_reason"] for a in agents)),
    tool_counts=dict(tool_counts),
  )
  out["seconds_per_case_median"] = median([r["wall_s"] for r in records])
  out["seconds_per_case_mean"] = mean([r["wall_s"] for r in records])
  out["chance"] = chance
  return out


def _pct(entry) -> tuple[str, str]:
  if not entry or entry["accuracy"] is None:
    return "-", "-"
  lo, hi = entry["accuracy_ci95"]
  return f"{100 * entry['accuracy']:.1f}", f"{100 * lo:.1f}-{100 * hi:.1f}"


def write_report(summary: dict, workdir: str, title: str) -> None:
  _write_json(os.path.join(workdir, "agent.json"), summary)
  chance = summary["chance"]
  marble = any("avg_task_score" in s for s in summary["methods"].values())
  lines = [
    f"# {title}",
    "",
    f"{summary['cases']} of {summary['cases_selected']} selected cases finished"
    + (f", {summary['errors']} failed (errors.jsonl)" if summary.get("errors") else "")
    + f". Model: {summary['model']}. Machine: {summary['machine']}.",
    "",
  ]
  if chance:
    lines += [
      f"Chance level (a uniformly random full-allowance guess over these cases): accuracy "
      f"{100 * chance['accuracy']:.1f}%, task score {chance['avg_task_score']:.2f}.",
      "",
    ]
  extra = "task score | labels predicted" if marble else "official scorer (%) | 95% CI"
  lines += [
    f"| method | accuracy (%) | 95% CI (Wilson) | {extra} | TTFT median (ms) | speed-up vs text"
    " | judger prompt tokens |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for m, s in summary["methods"].items():
    speed = s["ttft_speedup_vs_text"]
    name = f"{m} (untrained)" if s["adapter"] == "none" and m not in ("text", "pcw") else m
    acc, ci = _pct(s)
    if marble:
      cols = f"{s['avg_task_score'] or 0:.2f} | {s['avg_predicted'] or 0:.2f}"
    else:
      cols = " | ".join(_pct(s.get("official")))
    lines.append(
      f"| {name} | {acc} | {ci} | {cols} | {1e3 * (s['ttft_median_s'] or 0):.1f} | "
      f"{'' if speed is None else f'{speed:.2f}x'} | {s['prompt_tokens_mean'] or 0:.0f} |"
    )
  w = summary["workers"]
  lines += [
    "",
    f"Workers: {w['steps_mean'] or 0:.2f} steps per agent on average; stop reasons "
    f"{w['stop_reasons']}; tool calls by status {w['tool_counts']}; turn TTFT median "
    f"{1e3 * (w['turn_ttft_median_s'] or 0):.1f} ms over {w['turns_timed']} timed turns "
    f"({w['turns_compiled']} turns that compiled are left out).",
    f"Wall time per case: median {summary['seconds_per_case_median'] or 0:.1f} s, mean "
    f"{summary['seconds_per_case_mean'] or 0:.1f} s (environment, workers, all judgers).",
    "",
    "TTFT: cache preparation (re-encode, mapper, merge) plus the judger's first-turn prefill and "
    "first token, device-synchronised, compilation excluded; medians over cases.",
    "",
    "![accuracy and TTFT per method](agent.png)",
  ]
  with open(os.path.join(workdir, "agent.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  _plot(summary, os.path.join(workdir, "agent.png"), title)


def _plot(summary: dict, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  methods = list(summary["methods"])
  stats = [summary["methods"][m] for m in methods]
  acc = [100 * (s["accuracy"] or 0) for s in stats]
  cis = [s["accuracy_ci95"] or [0, 0] for s in stats]
  err = [
    [a - 100 * ci[0] for a, ci in zip(acc, cis, strict=True)],
    [100 * ci[1] - a for a, ci in zip(acc, cis, strict=True)],
  ]
  fig, (ax_acc, ax_ttft) = plt.subplots(1, 2, figsize=(9, 3.5))
  ax_acc.bar(methods, acc, yerr=err, capsize=4, color="tab:blue")
  if summary["chance"]:
    ax_acc.axhline(100 * summary["chance"]["accuracy"], color="gray", ls="--", label="chance")
    ax_acc.legend(loc="upper right", fontsize=8)
  ax_acc.set_ylabel("accuracy (%), 95% Wilson CI")
  ax_acc.set_ylim(0, 100)
  ax_ttft.bar(methods, [1e3 * (s["ttft_median_s"] or 0) for s in stats], color="tab:orange")
  ax_ttft.set_ylabel("judger TTFT median (ms)")
  for ax in (ax_acc, ax_ttft):
    ax.tick_params(axis="x", labelrotation=20)
  fig.suptitle(f"{title}: {summary['cases']} cases", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _run_items(items, key, path_of, step, workdir) -> list[dict]:
  """Runs step(item) for the items without a record; returns the errors (also in errors.jsonl)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  todo = [x for x in items if not os.path.exists(path_of(x))]
  logging.info("%d cases selected, %d to run", len(items), len(todo))
  errors = []
  for item in tqdm(todo, desc="cases", unit="case"):
    try:
      record = step(item)
    except Exception as e:  # pylint: disable=broad-except  # recorded, retried on rerun
      logging.exception("case %s failed", key(item))
      errors.append(dict(id=key(item), error=f"{type(e).__name__}: {e}", time=time.time()))
      with open(os.path.join(workdir, "errors.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(errors[-1]) + "\n")
      continue
    _write_json(path_of(item), record)
  return errors


def _stored(source_dir: str, item_id) -> dict:
  path = os.path.join(source_dir, "cases", f"{item_id}.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"fixed_trajectories: no stored record {path}")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _marble(c, model, tokenizer, adapters, workdir, path_of):
  from ps_jax.agents import postgres  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.marble import (  # pylint: disable=import-outside-toplevel
    chance_baseline,
    load_cases,
    runner,
  )

  config = runner.MarbleConfig(
    methods=tuple(c.methods),
    max_steps=c.max_steps,
    judger_max_steps=c.judger_max_steps,
    judger_max_new_tokens=c.judger_max_new_tokens,
    memory_mode=c.memory_mode,
    settle_s=c.settle_s,
    lock_hold_s=None if c.lock_hold_s < 0 else c.lock_hold_s,
  )
  cases = _select(load_cases(), c, lambda x: x.task_id)
  key = lambda x: x.task_id  # noqa: E731
  if c.fixed_trajectories:
    step = lambda case: runner.rescore_case(  # noqa: E731
      _stored(c.fixed_trajectories, case.task_id),
      case,
      model=model,
      tokenizer=tokenizer,
      config=config,
      adapters=adapters,
    )
    errors = _run_items(cases, key, path_of, step, workdir)
  elif any(not os.path.exists(path_of(x)) for x in cases):
    workers = runner.TimedModelPolicy(
      model, tokenizer, max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=c.seed
    )
    with postgres.LocalPostgres() as pg:
      step = lambda case: runner.run_case(  # noqa: E731
        case,
        model=model,
        tokenizer=tokenizer,
        workers=workers,
        pg=pg,
        config=config,
        adapters=adapters,
      )
      errors = _run_items(cases, key, path_of, step, workdir)
  else:
    errors = []
  done = [x for x in cases if os.path.exists(path_of(x))]
  return cases, errors, config.methods, chance_baseline(done), "MARBLE database diagnosis"


def _gaia(c, model, tokenizer, adapters, workdir, path_of):
  from ps_jax.agents import gaia_runner  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.gaia import gaia_files_tasks, load_gaia  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.marble.runner import TimedModelPolicy  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.tools import ReplayBackend, default_registry  # pylint: disable=import-outside-toplevel

  config = gaia_runner.GaiaConfig(
    methods=tuple(c.methods),
    num_workers=c.num_workers,
    max_steps=c.max_steps,
    judger_max_steps=c.judger_max_steps,
    judger_max_new_tokens=c.judger_max_new_tokens,
    memory_mode=c.memory_mode,
  )
  if c.source == "files":
    tasks = gaia_files_tasks(os.path.join(workdir, "files"), c.num_tasks, c.seed)
    title = "gaia-files (offline GAIA-format tasks)"
  elif c.source == "hf":
    if not c.data_dir:
      raise ValueError("configs/agent.py:gaia needs --config.data_dir=DIR (the GAIA dataset root)")
    tasks = [t for t in load_gaia(c.data_dir, c.split, levels=tuple(c.levels)) if t.scorable]
    title = f"GAIA {c.split} (levels {tuple(c.levels)})"
  else:
    raise ValueError(f"config.source={c.source!r}; expected 'files' or 'hf'")
  for t in tasks:
    if not _SAFE_ID.match(t.task_id):
      raise ValueError(f"task_id {t.task_id!r} is not a safe file name")
  tasks = _select(tasks, c, lambda x: x.task_id)
  backend = ReplayBackend.from_jsonl(c.web_replay) if c.web_replay else ReplayBackend()
  registry = default_registry(backend, python=c.python)
  key = lambda x: x.task_id  # noqa: E731
  if c.fixed_trajectories:
    step = lambda task: gaia_runner.rescore_task(  # noqa: E731
      _stored(c.fixed_trajectories, task.task_id),
      task,
      model=model,
      tokenizer=tokenizer,
      registry=registry,
      config=config,
      adapters=adapters,
    )
  else:
    workers = TimedModelPolicy(
      model,
      tokenizer,
      max_new_tokens=c.max_new_tokens,
      temperature=c.temperature,
      top_p=0.95 if c.temperature > 0 else 1.0,
      seed=c.seed,
    )
    step = lambda task: gaia_runner.run_task(  # noqa: E731
      task,
      model=model,
      tokenizer=tokenizer,
      workers=workers,
      registry=registry,
      config=config,
      adapters=adapters,
    )
  errors = _run_items(tasks, key, path_of, step, workdir)
  return tasks, errors, config.methods, None, title


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import build_model  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  workdir = FLAGS.workdir
  case_dir = os.path.join(workdir, "cases")
  os.makedirs(case_dir, exist_ok=True)
  model, tokenizer = build_model(c.model)
  adapters = {m: ps.load_adapter(d, model.config) for m, d in c.adapters.items() if d}

  def path_of(item):
    return os.path.join(case_dir, f"{item.task_id}.json")

  run = {"marble": _marble, "gaia": _gaia}.get(c.workflow)
  if run is None:
    raise ValueError(f"config.workflow={c.workflow!r}; expected 'marble' or 'gaia'")
  items, errors, methods, chance, title = run(c, model, tokenizer, adapters, workdir, path_of)
  records = []
  for x in items:
    if os.path.exists(path_of(x)):
      with open(path_of(x), encoding="utf-8") as f:
        records.append(json.load(f))
  summary = summarize(records, methods, chance)
  source = c.model.source + (" (random weights, tiny shape)" if c.model.random_init else "")
  summary.update(
    cases_selected=len(items),
    errors=len(errors),
    model=source,
    machine=_machine(),
    config=c.to_dict(),
    fixed_trajectories=c.fixed_trajectories or None,
  )
  write_report(summary, workdir, title)
  print(open(os.path.join(workdir, "agent.md"), encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
