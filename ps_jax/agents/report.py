"""The report of an agent workflow run (launch.agent): accuracy per method with Wilson
intervals, the chance line (MARBLE), both scorers (GAIA), TTFT per method; agent.json,
agent.md and agent.png."""

from __future__ import annotations

import collections
import json
import os
import platform


def write_json(path: str, obj) -> None:
  """Writes `obj` atomically: a reader (or a resumed run) never sees a half-written file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def machine() -> str:
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
  write_json(os.path.join(workdir, "agent.json"), summary)
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
  from ps_jax.evals.runner import plot_accuracy_and_ttft  # pylint: disable=import-outside-toplevel

  plot_accuracy_and_ttft(
    summary["methods"],
    os.path.join(workdir, "agent.png"),
    f"{title}: {summary['cases']} cases",
    accuracy_label="accuracy (%), 95% Wilson CI",
    ttft_label="judger TTFT median (ms)",
    chance=summary["chance"]["accuracy"] if summary["chance"] else None,
  )
