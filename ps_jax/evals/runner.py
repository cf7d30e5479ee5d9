"""The evaluation runner: workers -> each synthesis method -> scores, per example, resumable.

Workflows produce the branches; synthesis never changes with them. The default workflow
samples N workers from the frozen base model on the formatted question; a tool-using
workflow (ReAct workers for GAIA, multi-agent diagnosis) implements the same `Workflow`
protocol and returns fixed-text branches of its trajectories (`ps_jax.encode_branches`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from ps_jax.adapter import Adapter
from ps_jax.cache.branches import Branches
from ps_jax.evals.datasets import EvalExample, format_question
from ps_jax.evals.sandbox import SandboxLimits, sandbox_isolation
from ps_jax.evals.scorers import score_example
from ps_jax.evals.stats import wilson_interval
from ps_jax.model import Transformer
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import METHOD_TABLE, synthesize
from ps_jax.workers import run_workers

# Workers and synthesizer see the dataset's own instruction (format_question) as the question.
EVAL_TEMPLATES = PromptTemplates(worker="{question}")


class Workflow(Protocol):
  def __call__(
    self, model: Transformer, tokenizer, examples: Sequence[EvalExample], rng: jax.Array
  ) -> Branches:
    """The branches (worker outputs) of a batch of examples."""


@dataclasses.dataclass(frozen=True)
class SamplingWorkers:
  """N independent workers sampled from the base model on the formatted question."""

  num_branches: int = 3
  max_new_tokens: int = 256
  temperature: float = 0.6
  top_p: float = 0.95
  templates: PromptTemplates = EVAL_TEMPLATES

  def __call__(self, model, tokenizer, examples, rng):
    return run_workers(
      model,
      tokenizer,
      [format_question(e) for e in examples],
      num_branches=self.num_branches,
      max_new_tokens=self.max_new_tokens,
      rng=rng,
      temperature=self.temperature,
      top_p=self.top_p,
      templates=self.templates,
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  methods: tuple[str, ...] = ("text", "pcw", "parallel_synthesis")
  max_new_tokens: int = 256  # synthesizer
  batch_size: int = 4
  seed: int = 0
  code_timeout_s: float = 10.0
  # Run generated code with rlimits only where the sandbox cannot contain it (see sandbox.py).
  sandbox_allow_unsafe: bool = False
  templates: PromptTemplates = EVAL_TEMPLATES

  @property
  def sandbox_limits(self) -> SandboxLimits:
    return SandboxLimits(allow_unsafe=self.sandbox_allow_unsafe)


def _read_done(path: str) -> dict[str, dict]:
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill: that example is redone
        done[rec["id"]] = rec
  return done


def run_eval(
  model: Transformer,
  tokenizer,
  examples: Sequence[EvalExample],
  cfg: EvalConfig,
  workdir: str,
  *,
  workflow: Workflow = SamplingWorkers(),
  adapters: Mapping[str, Adapter] | None = None,
) -> dict:
  """Evaluates every method on every example; resumes from WORKDIR/results.jsonl.

  `adapters` maps a method to the adapter trained for it (a parallel_synthesis adapter and a
  text_lora one are different weights); a method without one runs untrained (identity mapper,
  no LoRA), and the summary says so per method.

  Examples are processed in fixed chunks of batch_size whose rng depends only on the seed
  and the chunk index, so a resumed run reproduces what an uninterrupted run computes.
  """
  adapters = dict(adapters or {})
  for m in adapters:
    if m not in cfg.methods or not METHOD_TABLE[m].trainable:
      raise ValueError(
        f"adapters: {m!r} is not a trained method of cfg.methods {tuple(cfg.methods)}"
      )
  isolation = None
  if any(e.kind == "code" for e in examples):
    isolation = sandbox_isolation(cfg.sandbox_limits)
    if isolation.startswith("refused"):  # before hours of generation, not at the first score
      raise RuntimeError(f"these examples run generated code, and the sandbox {isolation}")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "results.jsonl")
  done = _read_done(path)
  with open(path, "w") as f:  # drop a line cut by a kill, so appends start on a fresh line
    f.writelines(json.dumps(r) + "\n" for r in done.values())
  chunks = [examples[i : i + cfg.batch_size] for i in range(0, len(examples), cfg.batch_size)]
  with (
    open(path, "a") as out,
    tqdm(total=len(examples), initial=len(done), desc="eval", unit="example") as bar,
  ):
    for index, chunk in enumerate(chunks):
      if all(e.id in done for e in chunk):
        continue
      rng = jax.random.fold_in(jax.random.key(cfg.seed), index)
      branches = workflow(model, tokenizer, chunk, rng)
      questions = [format_question(e) for e in chunk]
      per_method = {}
      for m in cfg.methods:
        per_method[m] = synthesize(
          model,
          tokenizer,
          branches,
          questions,
          method=m,
          adapter=adapters.get(m),
          max_new_tokens=cfg.max_new_tokens,
          templates=cfg.templates,
        )
      # Scored in parallel: each code example's tests run in a sandboxed process of their own.
      todo = [(i, m) for i, ex in enumerate(chunk) if ex.id not in done for m in per_method]
      outputs = [per_method[m].texts[i] for i, m in todo]
      score = functools.partial(
        score_example, timeout_s=cfg.code_timeout_s, limits=cfg.sandbox_limits
      )
      with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        values = pool.map(score, [chunk[i] for i, _ in todo], outputs)
        scores = dict(zip(todo, values, strict=True))
      for i, ex in enumerate(chunk):
        if ex.id in done:
          continue
        rec = {
          "id": ex.id,
          "chunk": index,
          "question": ex.question,
          "gold": ex.gold,
          "branches": branches.texts[i],
          "methods": {},
        }
        for m, res in per_method.items():
          rec["methods"][m] = {
            "output": res.texts[i],
            "score": scores[i, m],
            "ttft_s": res.ttft_s,  # of the whole chunk (one batched synthesizer call)
            "prompt_tokens": int(res.prompt_tokens[i]),
            "generated_tokens": int(res.generated_tokens[i]),
          }
        out.write(json.dumps(rec) + "\n")
        out.flush()
        done[ex.id] = rec
        bar.update(1)
  records = [done[e.id] for e in examples if e.id in done]
  summary = summarize(records, cfg.methods)
  summary["sandbox_isolation"] = isolation  # None: no generated code was run
  for m, entry in summary["methods"].items():
    if METHOD_TABLE[m].trainable:
      entry["adapter"] = "trained" if m in adapters else "none (untrained)"
  write_summary(summary, workdir)
  return summary


def summarize(records: Sequence[dict], methods: Sequence[str]) -> dict:
  """Accuracy, TTFT medians (one value per chunk) and speed-up versus text, per method."""
  out = {"num_examples": len(records), "methods": {}}
  for m in methods:
    scores = [r["methods"][m]["score"] for r in records]
    chunk_ttft = {r["chunk"]: r["methods"][m]["ttft_s"] for r in records}
    out["methods"][m] = {
      "accuracy": float(np.mean(scores)) if scores else float("nan"),
      "accuracy_ci95": list(wilson_interval(float(np.sum(scores)), len(scores))),
      "ttft_median_s": float(np.median(list(chunk_ttft.values()))) if chunk_ttft else None,
      "prompt_tokens_mean": float(np.mean([r["methods"][m]["prompt_tokens"] for r in records]))
      if records
      else None,
      "generated_tokens_mean": float(
        np.mean([r["methods"][m]["generated_tokens"] for r in records])
      )
      if records
      else None,
    }
  if "text" in out["methods"]:
    base = out["methods"]["text"]["ttft_median_s"]
    for s in out["methods"].values():
      s["ttft_speedup_vs_text"] = base / s["ttft_median_s"] if base and s["ttft_median_s"] else None
  return out


def write_summary(summary: dict, workdir: str, title: str = "Evaluation") -> None:
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  lines = [f"# {title}", "", f"{summary['num_examples']} examples.", ""]
  if summary.get("sandbox_isolation"):
    lines += [f"Generated code ran in the sandbox: {summary['sandbox_isolation']}.", ""]
  lines += [
    "| method | accuracy (%) | 95% CI (Wilson) | TTFT median (ms) | speed-up vs text "
    "| prompt tokens |",
    "|---|---|---|---|---|---|",
  ]
  for m, s in summary["methods"].items():
    speed = s.get("ttft_speedup_vs_text")
    lo, hi = s["accuracy_ci95"]
    name = f"{m} (untrained)" if s.get("adapter", "").startswith("none") else m
    lines.append(
      f"| {name} | {100 * s['accuracy']:.1f} | {100 * lo:.1f}-{100 * hi:.1f} | "
      f"{1e3 * (s['ttft_median_s'] or 0):.1f} | {'' if speed is None else f'{speed:.2f}x'} | "
      f"{s['prompt_tokens_mean']:.0f} |"
    )
  lines += ["", "![accuracy per method](summary.png)"]
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot_accuracy_and_ttft(
    summary["methods"],
    os.path.join(workdir, "summary.png"),
    f"{title}: {summary['num_examples']} examples",
  )


def plot_accuracy_and_ttft(
  methods: dict,
  path: str,
  title: str,
  *,
  accuracy_label: str = "accuracy (%), 95% CI",
  ttft_label: str = "TTFT median (ms)",
  chance: float | None = None,
) -> None:
  """Accuracy per method with its 95% interval, beside the median TTFT (the evaluation's and
  the agent workflows' plot). methods: name -> {"accuracy", "accuracy_ci95", "ttft_median_s"}
  (None: no value, drawn as 0); chance: an accuracy drawn as a dashed line."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = list(methods)
  stats = [methods[m] for m in names]
  acc = [100 * (s["accuracy"] or 0) for s in stats]
  cis = [s["accuracy_ci95"] or [0, 0] for s in stats]
  err = [
    [a - 100 * ci[0] for a, ci in zip(acc, cis, strict=True)],
    [100 * ci[1] - a for a, ci in zip(acc, cis, strict=True)],
  ]
  fig, (ax_acc, ax_ttft) = plt.subplots(1, 2, figsize=(9, 3.5))
  ax_acc.bar(names, acc, yerr=err, capsize=4, color="tab:blue")
  if chance is not None:
    ax_acc.axhline(100 * chance, color="gray", ls="--", label="chance")
    ax_acc.legend(loc="upper right", fontsize=8)
  ax_acc.set_ylabel(accuracy_label)
  ax_acc.set_ylim(0, 100)
  ax_ttft.bar(names, [1e3 * (s["ttft_median_s"] or 0) for s in stats], color="tab:orange")
  ax_ttft.set_ylabel(ttft_label)
  for ax in (ax_acc, ax_ttft):
    ax.tick_params(axis="x", labelrotation=20)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
