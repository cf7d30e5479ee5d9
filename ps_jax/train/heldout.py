"""Held-out evaluation of synthesis methods on rows with checkable answers, and its report.

`evaluate_methods` scores every method on the same encoded branches and keeps, besides the
accuracies, Wilson 95% intervals per group and per method, every example's score (by a
content id, so that two methods, or two runs on the same rows, can be paired) and paired
bootstrap tests between methods. `write_report` writes them as JSON, a markdown table and a
PNG with error bars.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ps_jax.adapter import Adapter
from ps_jax.data.rows import Row
from ps_jax.evals.stats import paired_bootstrap, wilson_interval
from ps_jax.generation import encode_prompts
from ps_jax.model import Transformer
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import synthesize
from ps_jax.workers import encode_branches

Scorer = Callable[[Row, str], float]  # (row, synthesizer output) -> score in [0, 1]
# Where the held-out branches' keys sit: "fixed" (each branch prefilled alone from position 0,
# as in training) or "worker" (each branch prefilled after its row's worker prompt, which is
# then dropped: the positions and context of a worker's output; see encode_branches).
BRANCH_LAYOUTS = ("fixed", "worker")
SIGNIFICANCE = 0.05  # a paired difference with p below this is reported as significant


def _generalization(row: Row) -> str:
  """The synthetic suite's "generalization" tag (in_distribution | new_template |
  unseen_family), "" for rows without one."""
  return str(row.meta.get("generalization", ""))


def example_ids(rows: Sequence[Row]) -> list[str]:
  """A stable id per row from its content (query, answer, contexts): the same rows get the same
  ids in every run, so methods evaluated in separate calls or runs can be paired by example.
  A repeated row gets "#2", "#3", ... appended."""
  ids, seen = [], collections.Counter()
  for r in rows:
    text = json.dumps([r.query, r.answer, list(r.contexts)], ensure_ascii=False)
    base = hashlib.sha256(text.encode()).hexdigest()[:16]
    seen[base] += 1
    ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
  return ids


def _interval(scores: Sequence[float]) -> list[float]:
  return list(wilson_interval(float(np.sum(scores)), len(scores)))


def _macro(per_group: Mapping[str, float], sizes: Mapping[str, int]) -> tuple[float, list[float]]:
  """(mean over groups of the group means, its Wilson interval with n = all examples).

  With equal group sizes (the synthetic suite) this is the pooled accuracy and its exact
  Wilson interval; with unequal sizes the interval is an approximation around the mean.
  """
  acc = float(np.mean(list(per_group.values())))
  n = int(sum(sizes[g] for g in per_group))
  return acc, list(wilson_interval(acc * n, n))


def paired_tests(
  results: Mapping,
  pairs: Sequence[tuple[str, str]] | None = None,
  *,
  n: int = 10000,
  seed: int = 0,
) -> list[dict]:
  """Paired bootstrap (``stats.paired_bootstrap``) of A - B over the examples of ``results``
  (from `evaluate_methods`), for each (A, B) in ``pairs`` (default: every pair of methods,
  in method order). Each entry: {a, b, diff, ci95, p_value, significant (p < 0.05),
  n_examples, n_resamples}."""
  per = results["per_example"]
  methods = list(results["accuracy"])
  pairs = list(itertools.combinations(methods, 2)) if pairs is None else list(pairs)
  out = []
  for a, b in pairs:
    sa = dict(zip(per["ids"], per["scores"][a], strict=True))
    sb = dict(zip(per["ids"], per["scores"][b], strict=True))
    test = paired_bootstrap(sa, sb, n=n, seed=seed)
    out.append({"a": a, "b": b, **test, "significant": test["p_value"] < SIGNIFICANCE})
  return out


def evaluate_methods(
  model: Transformer,
  tokenizer,
  rows: Sequence[Row],
  *,
  scorer: Scorer,
  methods: Sequence[str],
  adapter: Adapter | None | Mapping[str, Adapter | None],
  max_new_tokens: int = 16,
  batch_size: int = 8,
  templates: PromptTemplates = PromptTemplates(),
  group: Callable[[Row], str] = lambda r: r.source,
  kind: Callable[[Row], str] | None = _generalization,
  samples_per_group: int = 4,
  keep_outputs: bool = True,
  bootstrap_resamples: int = 10000,
  branch_layout: str = "fixed",
) -> dict:
  """Every method on every row; accuracies with Wilson 95% intervals, TTFT, per-example scores.

  Each batch's branches are encoded once (fixed-text, frozen base) and every method reads the
  same branches, so the methods are compared on identical inputs. ``adapter`` is one adapter
  for every method but "text" (which runs the bare base model), or a mapping method ->
  adapter (None: no adapter) to give methods different adapters. ``branch_layout``
  (BRANCH_LAYOUTS) places the branches as in training ("fixed") or after their worker prompt
  ("worker"); the text methods read only the branch texts, the same in both.

  Returns:
    accuracy / accuracy_ci95: per method, the mean over groups of the group accuracies and
      its Wilson interval (n = all examples; exact when groups are of equal size).
    per_group / per_group_ci95 / group_sizes: per method and group (``group(row)``).
    per_kind / per_kind_ci95 / kind_sizes: the same over the groups of each kind
      (``kind(row)``, by default the synthetic suite's generalization tag: in_distribution,
      new_template, unseen_family); only when some row has a kind.
    paired: `paired_tests` between every two methods (paired bootstrap over examples).
    per_example: ids (`example_ids`), groups, kinds, scores {method: [...]} and, with
      ``keep_outputs``, outputs {method: [...]}, in row order: enough to rescore, or to pair
      methods across calls and runs.
    samples: up to ``samples_per_group`` examples per group (query, answer, outputs).
    ttft_median_s / ttft_spread_s, num_examples, batch_size, max_new_tokens.
  """
  if branch_layout not in BRANCH_LAYOUTS:
    raise ValueError(f"branch_layout={branch_layout!r}; expected one of {BRANCH_LAYOUTS}")
  scores = {m: [] for m in methods}
  outputs = {m: [] for m in methods}
  ttft = {m: [] for m in methods}
  for start in tqdm(range(0, len(rows), batch_size), desc="eval", unit="batch"):
    batch = rows[start : start + batch_size]
    prefixes = None
    if branch_layout == "worker":
      prefixes = encode_prompts(tokenizer, [templates.worker_messages(r.query) for r in batch])
    branches = encode_branches(
      model, tokenizer, [list(r.contexts) for r in batch], prefixes=prefixes
    )
    for m in methods:
      if isinstance(adapter, Mapping):
        method_adapter = adapter.get(m)
      else:
        method_adapter = adapter if m != "text" else None
      res = synthesize(
        model,
        tokenizer,
        branches,
        [r.query for r in batch],
        method=m,
        adapter=method_adapter,
        max_new_tokens=max_new_tokens,
        templates=templates,
      )
      ttft[m].append(res.ttft_s)
      outputs[m] += list(res.texts)
      scores[m] += [float(scorer(row, text)) for row, text in zip(batch, res.texts, strict=True)]

  groups = [group(r) for r in rows]
  kinds = [kind(r) if kind is not None else "" for r in rows]
  members = collections.defaultdict(list)  # group -> row indices
  for i, g in enumerate(groups):
    members[g].append(i)
  group_sizes = {g: len(members[g]) for g in sorted(members)}

  def group_scores(m: str, g: str) -> list[float]:
    return [scores[m][i] for i in members[g]]

  per_group = {m: {g: float(np.mean(group_scores(m, g))) for g in group_sizes} for m in methods}
  per_group_ci = {m: {g: _interval(group_scores(m, g)) for g in group_sizes} for m in methods}
  macro = {m: _macro(per_group[m], group_sizes) for m in methods}
  results = {
    "accuracy": {m: macro[m][0] for m in methods},
    "accuracy_ci95": {m: macro[m][1] for m in methods},
    "per_group": per_group,
    "per_group_ci95": per_group_ci,
    "group_sizes": group_sizes,
  }
  if any(kinds):  # the mean over groups within each kind, from that kind's rows only
    by_kind = collections.defaultdict(lambda: collections.defaultdict(list))
    for i, (g, k) in enumerate(zip(groups, kinds, strict=True)):
      by_kind[k or "other"][g].append(i)
    per_kind = {
      m: {
        k: _macro(
          {g: float(np.mean([scores[m][i] for i in idx])) for g, idx in gs.items()},
          {g: len(idx) for g, idx in gs.items()},
        )
        for k, gs in sorted(by_kind.items())
      }
      for m in methods
    }
    results["per_kind"] = {m: {k: v[0] for k, v in d.items()} for m, d in per_kind.items()}
    results["per_kind_ci95"] = {m: {k: v[1] for k, v in d.items()} for m, d in per_kind.items()}
    results["kind_sizes"] = {
      k: sum(len(idx) for idx in gs.values()) for k, gs in sorted(by_kind.items())
    }
  ids = example_ids(rows)
  results["per_example"] = {
    "ids": ids,
    "groups": groups,
    "kinds": kinds,
    "scores": scores,
    **({"outputs": outputs} if keep_outputs else {}),
  }
  results["paired"] = paired_tests(results, n=bootstrap_resamples) if len(rows) else []
  samples, shown = [], collections.Counter()
  for i, row in enumerate(rows):
    if shown[groups[i]] < samples_per_group:
      shown[groups[i]] += 1
      samples.append(
        {
          "id": ids[i],
          "group": groups[i],
          "query": row.query,
          "answer": row.answer,
          **{m: outputs[m][i] for m in methods},
        }
      )
  results.update(
    {
      "ttft_median_s": {m: float(np.median(ttft[m])) for m in methods},
      "ttft_spread_s": {m: [float(np.min(ttft[m])), float(np.max(ttft[m]))] for m in methods},
      "num_examples": len(rows),
      "batch_size": batch_size,
      "max_new_tokens": max_new_tokens,
      "branch_layout": branch_layout,
      "samples": samples,
    }
  )
  return results


def _cell(acc: float, ci: Sequence[float] | None) -> str:
  if ci is None or any(np.isnan(ci)):
    return f"{100 * acc:.1f}"
  return f"{100 * acc:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def write_report(
  results: dict, directory: str, *, name: str = "demo", title: str = "", extra: dict | None = None
) -> dict[str, str]:
  """Writes NAME.json (results + extra), NAME.md (accuracy tables with Wilson 95% intervals,
  paired tests, TTFT) and NAME.png (accuracy per group and method, with error bars)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  methods = list(results["accuracy"])
  groups = sorted({g for m in methods for g in results["per_group"][m]})
  sizes = results.get("group_sizes", {})
  group_ci = results.get("per_group_ci95", {})
  paths = {ext: os.path.join(directory, f"{name}.{ext}") for ext in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump({**results, **(extra or {})}, f, indent=1)

  lines = [f"# {title or name}", ""]
  for k, v in (extra or {}).items():
    if not isinstance(v, (dict, list)):
      lines.append(f"- {k}: {v}")
  lines += [
    "",
    "| group | n | " + " | ".join(methods) + " |",
    "|---" * (len(methods) + 2) + "|",
  ]
  for g in groups:
    cells = [
      _cell(results["per_group"][m].get(g, float("nan")), group_ci.get(m, {}).get(g))
      for m in methods
    ]
    lines.append(f"| {g} | {sizes.get(g, '')} | " + " | ".join(cells) + " |")
  for k in results.get("kind_sizes", {}):
    cells = [_cell(results["per_kind"][m][k], results["per_kind_ci95"][m][k]) for m in methods]
    lines.append(f"| *mean: {k}* | {results['kind_sizes'][k]} | " + " | ".join(cells) + " |")
  acc_ci = results.get("accuracy_ci95", {})
  lines.append(
    f"| **mean over groups** | {results['num_examples']} | "
    + " | ".join(f"**{_cell(results['accuracy'][m], acc_ci.get(m))}**" for m in methods)
    + " |"
  )
  lines += [
    "",
    f"Accuracy in % on {results['num_examples']} held-out examples, with Wilson 95% "
    "intervals [low, high] (for a mean over groups: n = all its examples).",
  ]
  if results.get("paired"):
    lines += [
      "",
      "| A - B | difference (points) | 95% CI | p | significant (p < 0.05) |",
      "|---|---|---|---|---|",
    ]
    for t in results["paired"]:
      lines.append(
        f"| {t['a']} - {t['b']} | {100 * t['diff']:+.1f} | "
        f"[{100 * t['ci95'][0]:+.1f}, {100 * t['ci95'][1]:+.1f}] | {t['p_value']:.4f} | "
        f"{'yes' if t['significant'] else 'no'} |"
      )
    lines += [
      "",
      f"Paired bootstrap over the examples ({results['paired'][0]['n_resamples']} resamples; "
      "both methods scored on the same examples).",
    ]
  lines += [
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

  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) + 2) + 2, 4))
  width = 0.8 / len(methods)
  x = np.arange(len(groups) + 1)
  for i, m in enumerate(methods):
    vals = [results["per_group"][m].get(g, 0.0) for g in groups] + [results["accuracy"][m]]
    cis = [group_ci.get(m, {}).get(g) for g in groups] + [acc_ci.get(m)]
    lo = [v - c[0] if c is not None else 0.0 for v, c in zip(vals, cis, strict=True)]
    hi = [c[1] - v if c is not None else 0.0 for v, c in zip(vals, cis, strict=True)]
    ax.bar(
      x + i * width,
      np.array(vals) * 100,
      width,
      yerr=np.clip(np.nan_to_num(np.array([lo, hi]) * 100), 0, None),
      capsize=2,
      label=m,
    )
  ax.set_xticks(x + width * (len(methods) - 1) / 2)
  ax.set_xticklabels([g.split("/")[-1] for g in groups] + ["mean"], rotation=20)
  ax.set_ylabel("accuracy (%), Wilson 95% CI")
  ax.set_ylim(0, 105)
  ax.set_title(title or name)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
  fig.tight_layout()
  fig.savefig(paths["png"], dpi=120)
  plt.close(fig)
  return paths
