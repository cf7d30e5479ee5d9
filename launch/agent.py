r"""Run an agent workflow (workers with tools -> branches -> a judger per method) and report it.

  python -m launch.agent --config configs/agent.py:marble --workdir workdir/agent_marble

Writes WORKDIR/cases/<id>.json per case (skipped when present: rerunning resumes), failures to
WORKDIR/errors.jsonl (retried on rerun), and the report agent.md / agent.json / agent.png.
See configs/agent.py for the presets and the fixed-trajectory mode.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Output directory (resumable).", required=True)
config_flags.DEFINE_config_file("config", None, "Agent workflow config file.", lock_config=True)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _select(cases, c):
  if c.case_ids:
    by_id = {x.task_id: x for x in cases}
    missing = [i for i in c.case_ids if i not in by_id]
    if missing:
      raise ValueError(f"config.case_ids: no case with id {missing}")
    cases = [by_id[i] for i in c.case_ids]
  return cases if c.limit < 0 else cases[: c.limit]


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


def summarize(records, cases, methods, *, chance_fn) -> dict:
  """Accuracy (Wilson 95%), task score and TTFT per method over the finished case records."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from ps_jax.evals.stats import wilson_interval  # pylint: disable=import-outside-toplevel

  def median(xs):
    return float(np.median(xs)) if xs else None

  out = {"cases": len(records), "methods": {}}
  for m in methods:
    rows = [r["methods"][m] for r in records]
    n_ok = sum(bool(x["score"]["correct"]) for x in rows)
    out["methods"][m] = dict(
      correct=n_ok,
      accuracy=n_ok / len(rows) if rows else float("nan"),
      accuracy_ci95=list(wilson_interval(float(n_ok), len(rows))) if rows else [None, None],
      avg_task_score=float(np.mean([x["score"]["task_score"] for x in rows])) if rows else None,
      avg_predicted=float(np.mean([len(x["score"]["predicted_root_causes"]) for x in rows]))
      if rows
      else None,
      ttft_median_s=median([x["ttft_s"] for x in rows]),
      cache_prepare_median_s=median([x["cache_prepare_s"] for x in rows]),
      judger_turns_mean=float(np.mean([len(x["turn_ttft_s"]) for x in rows])) if rows else None,
      prompt_tokens_mean=float(np.mean([x["prompt_tokens"] for x in rows])) if rows else None,
      adapter=rows[0]["adapter"] if rows else None,
    )
  text = out["methods"].get("text", {}).get("ttft_median_s")
  for s in out["methods"].values():
    s["ttft_speedup_vs_text"] = text / s["ttft_median_s"] if text and s["ttft_median_s"] else None
  turns = [t for r in records for t in r["workers"].get("turn_times", [])]
  warm = [t["ttft_s"] for t in turns if not t["compiled"]]
  out["workers"] = dict(
    turn_ttft_median_s=median(warm),
    turns_timed=len(warm),
    turns_compiled=len(turns) - len(warm),
    steps_mean=float(np.mean([len(a["steps"]) for r in records for a in r["workers"]["agents"]]))
    if records
    else None,
    tool_calls=int(
      sum(a["counts"].get("tool_calls", 0) for r in records for a in r["workers"]["agents"])
    ),
  )
  out["seconds_per_case_median"] = median([r["wall_s"] for r in records])
  out["seconds_per_case_mean"] = float(np.mean([r["wall_s"] for r in records])) if records else None
  out["chance"] = chance_fn([c for c in cases if any(r["task_id"] == c.task_id for r in records)])
  return out


def write_report(summary: dict, workdir: str, title: str) -> None:
  _write_json(os.path.join(workdir, "agent.json"), summary)
  chance = summary["chance"]
  lines = [
    f"# {title}",
    "",
    f"{summary['cases']} of {summary['cases_selected']} selected cases finished"
    + (f", {summary['errors']} failed (errors.jsonl)" if summary.get("errors") else "")
    + f". Model: {summary['model']}. Machine: {summary['machine']}.",
    "",
    f"Chance level (a uniformly random full-allowance guess over these cases): accuracy "
    f"{100 * chance['accuracy']:.1f}%, task score {chance['avg_task_score']:.2f}.",
    "",
    "| method | accuracy (%) | 95% CI (Wilson) | task score | labels predicted | TTFT median (ms)"
    " | speed-up vs text | judger prompt tokens |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for m, s in summary["methods"].items():
    lo, hi = s["accuracy_ci95"]
    speed = s["ttft_speedup_vs_text"]
    name = f"{m} (untrained)" if s["adapter"] == "none" and m not in ("text", "pcw") else m
    lines.append(
      f"| {name} | {100 * s['accuracy']:.1f} | {100 * (lo or 0):.1f}-{100 * (hi or 0):.1f} | "
      f"{s['avg_task_score']:.2f} | {s['avg_predicted']:.2f} | "
      f"{1e3 * (s['ttft_median_s'] or 0):.1f} | {'' if speed is None else f'{speed:.2f}x'} | "
      f"{s['prompt_tokens_mean']:.0f} |"
    )
  w = summary["workers"]
  lines += [
    "",
    f"Workers: {w['steps_mean']:.2f} steps per agent on average, {w['tool_calls']} tool calls; "
    f"turn TTFT median {1e3 * (w['turn_ttft_median_s'] or 0):.1f} ms over {w['turns_timed']} "
    f"timed turns ({w['turns_compiled']} turns that compiled are left out).",
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
  acc = [100 * s["accuracy"] for s in stats]
  err = [
    [a - 100 * (s["accuracy_ci95"][0] or 0) for a, s in zip(acc, stats, strict=True)],
    [100 * (s["accuracy_ci95"][1] or 0) - a for a, s in zip(acc, stats, strict=True)],
  ]
  fig, (ax_acc, ax_ttft) = plt.subplots(1, 2, figsize=(9, 3.5))
  ax_acc.bar(methods, acc, yerr=err, capsize=4, color="tab:blue")
  ax_acc.axhline(100 * summary["chance"]["accuracy"], color="gray", ls="--", label="chance")
  ax_acc.set_ylabel("accuracy (%), 95% Wilson CI")
  ax_acc.set_ylim(0, 100)
  ax_acc.legend(loc="upper right", fontsize=8)
  ax_ttft.bar(methods, [1e3 * (s["ttft_median_s"] or 0) for s in stats], color="tab:orange")
  ax_ttft.set_ylabel("judger TTFT median (ms)")
  for ax in (ax_acc, ax_ttft):
    ax.tick_params(axis="x", labelrotation=20)
  fig.suptitle(f"{title}: {summary['cases']} cases", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.agents import postgres  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.marble import (  # pylint: disable=import-outside-toplevel
    chance_baseline,
    load_cases,
    runner,
  )
  from ps_jax.experiment import build_model  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  workdir = FLAGS.workdir
  case_dir = os.path.join(workdir, "cases")
  os.makedirs(case_dir, exist_ok=True)
  model, tokenizer = build_model(c.model)
  adapters = {m: ps.load_adapter(d, model.config) for m, d in c.adapters.items() if d}
  config = runner.MarbleConfig(
    methods=tuple(c.methods),
    max_steps=c.max_steps,
    judger_max_steps=c.judger_max_steps,
    judger_max_new_tokens=c.judger_max_new_tokens,
    memory_mode=c.memory_mode,
    settle_s=c.settle_s,
    lock_hold_s=None if c.lock_hold_s < 0 else c.lock_hold_s,
  )
  cases = _select(load_cases(), c)
  path_of = {x.task_id: os.path.join(case_dir, f"{x.task_id}.json") for x in cases}
  todo = [x for x in cases if not os.path.exists(path_of[x.task_id])]
  logging.info("%d cases selected, %d to run", len(cases), len(todo))
  errors = []

  def run_all(step):
    for case in tqdm(todo, desc="cases", unit="case"):
      try:
        record = step(case)
      except Exception as e:  # pylint: disable=broad-except  # recorded, retried on rerun
        logging.exception("case %s failed", case.task_id)
        errors.append(
          dict(task_id=case.task_id, error=f"{type(e).__name__}: {e}", time=time.time())
        )
        with open(os.path.join(workdir, "errors.jsonl"), "a", encoding="utf-8") as f:
          f.write(json.dumps(errors[-1]) + "\n")
        continue
      _write_json(path_of[case.task_id], record)

  if c.fixed_trajectories:
    source = os.path.join(c.fixed_trajectories, "cases")

    def rescore(case):
      with open(os.path.join(source, f"{case.task_id}.json"), encoding="utf-8") as f:
        record = json.load(f)
      return runner.rescore_case(
        record, case, model=model, tokenizer=tokenizer, config=config, adapters=adapters
      )

    run_all(rescore)
  elif todo:
    workers = runner.TimedModelPolicy(
      model, tokenizer, max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=c.seed
    )
    with postgres.LocalPostgres() as pg:
      run_all(
        lambda case: runner.run_case(
          case,
          model=model,
          tokenizer=tokenizer,
          workers=workers,
          pg=pg,
          config=config,
          adapters=adapters,
        )
      )
  records = []
  for x in cases:
    if os.path.exists(path_of[x.task_id]):
      with open(path_of[x.task_id], encoding="utf-8") as f:
        records.append(json.load(f))
  summary = summarize(records, cases, config.methods, chance_fn=chance_baseline)
  source = c.model.source + (" (random weights, tiny shape)" if c.model.random_init else "")
  summary.update(
    cases_selected=len(cases),
    errors=len(errors),
    model=source,
    machine=_machine(),
    config=c.to_dict(),
    fixed_trajectories=c.fixed_trajectories or None,
  )
  write_report(summary, workdir, f"MARBLE database diagnosis ({c.workflow})")
  print(open(os.path.join(workdir, "agent.md"), encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
