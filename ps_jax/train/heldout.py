"""Held-out evaluation of synthesis methods on rows with checkable answers, and its report."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ps_jax.adapter import Adapter
from ps_jax.data.rows import Row
from ps_jax.model import Transformer
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import synthesize
from ps_jax.workers import encode_branches

Scorer = Callable[[Row, str], float]  # (row, synthesizer output) -> score in [0, 1]


def evaluate_methods(
  model: Transformer,
  tokenizer,
  rows: Sequence[Row],
  *,
  scorer: Scorer,
  methods: Sequence[str],
  adapter: Adapter | None,
  max_new_tokens: int = 16,
  batch_size: int = 8,
  templates: PromptTemplates = PromptTemplates(),
  group: Callable[[Row], str] = lambda r: r.source,
) -> dict:
  """Per-method accuracy (mean over groups of the group means), per-group accuracy, TTFT.

  Each batch's branches are encoded once (fixed-text, frozen base) and every method reads the
  same branches, so the methods are compared on identical inputs.
  """
  scores = {m: collections.defaultdict(list) for m in methods}
  ttft = {m: [] for m in methods}
  samples = []
  for start in tqdm(range(0, len(rows), batch_size), desc="eval", unit="batch"):
    batch = rows[start : start + batch_size]
    branches = encode_branches(model, tokenizer, [list(r.contexts) for r in batch])
    outputs = {}
    for m in methods:
      res = synthesize(
        model,
        tokenizer,
        branches,
        [r.query for r in batch],
        method=m,
        adapter=adapter if m != "text" else None,
        max_new_tokens=max_new_tokens,
        templates=templates,
      )
      ttft[m].append(res.ttft_s)
      outputs[m] = res.texts
      for row, text in zip(batch, res.texts, strict=True):
        scores[m][group(row)].append(scorer(row, text))
    for i, row in enumerate(batch):
      samples.append(
        {
          "group": group(row),
          "query": row.query,
          "answer": row.answer,
          **{m: outputs[m][i] for m in methods},
        }
      )
  per_group = {m: {g: float(np.mean(v)) for g, v in sorted(scores[m].items())} for m in methods}
  return {
    "accuracy": {m: float(np.mean(list(per_group[m].values()))) for m in methods},
    "per_group": per_group,
    "ttft_median_s": {m: float(np.median(ttft[m])) for m in methods},
    "ttft_spread_s": {m: [float(np.min(ttft[m])), float(np.max(ttft[m]))] for m in methods},
    "num_examples": len(rows),
    "batch_size": batch_size,
    "samples": samples[:24],
  }


def write_report(
  results: dict, directory: str, *, name: str = "demo", title: str = "", extra: dict | None = None
) -> dict[str, str]:
  """Writes NAME.json, NAME.md (tables) and NAME.png (accuracy per group and method)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  methods = list(results["accuracy"])
  groups = sorted({g for m in methods for g in results["per_group"][m]})
  paths = {ext: os.path.join(directory, f"{name}.{ext}") for ext in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump({**results, **(extra or {})}, f, indent=1)

  lines = [f"# {title or name}", ""]
  for k, v in (extra or {}).items():
    if not isinstance(v, (dict, list)):
      lines.append(f"- {k}: {v}")
  lines += ["", "| group | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
  for g in groups:
    cells = [f"{100 * results['per_group'][m].get(g, float('nan')):.1f}" for m in methods]
    lines.append(f"| {g} | " + " | ".join(cells) + " |")
  lines.append(
    "| **mean over groups** | "
    + " | ".join(f"**{100 * results['accuracy'][m]:.1f}**" for m in methods)
    + " |"
  )
  lines += [
    "",
    f"Accuracy in % on {results['num_examples']} held-out examples.",
    "",
    "| method | TTFT median (ms) | min-max (ms) |",
    "|---|---|---|",
  ]
  for m in methods:
    lo, hi = results["ttft_spread_s"][m]
    lines.append(
      f"| {m} | {1e3 * results['ttft_median_s'][m]:.1f} | {1e3 * lo:.1f}-{1e3 * hi:.1f} |"
    )
  lines += [
    "",
    f"TTFT of a batch of {results['batch_size']} synthesizer calls (prefill + first "
    "token; the cache methods include re-encoding, mapper and merge), compile excluded.",
  ]
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")

  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) + 2), 4))
  width = 0.8 / len(methods)
  x = np.arange(len(groups) + 1)
  for i, m in enumerate(methods):
    vals = [results["per_group"][m].get(g, 0.0) for g in groups] + [results["accuracy"][m]]
    ax.bar(x + i * width, np.array(vals) * 100, width, label=m)
  ax.set_xticks(x + width * (len(methods) - 1) / 2)
  ax.set_xticklabels([g.split("/")[-1] for g in groups] + ["mean"], rotation=20)
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title or name)
  ax.legend()
  fig.tight_layout()
  fig.savefig(paths["png"], dpi=120)
  plt.close(fig)
  return paths
