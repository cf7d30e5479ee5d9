"""Confidence intervals and paired tests for accuracies.

- ``wilson_interval``: one accuracy on n examples (a binomial proportion).
- ``mean_ci``: the mean of a few runs (e.g. training seeds), with a Student-t interval.
- ``paired_bootstrap``: the difference between two methods scored on the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  """The Wilson score interval of a proportion (95% by default); (nan, nan) for n = 0.

  Better than the normal approximation at the small n and extreme rates of model evals: it
  never leaves [0, 1] and is not empty at 0% or 100%.
  """
  if n <= 0:
    return float("nan"), float("nan")
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
  """Mean and Student-t confidence interval of a few measurements (e.g. one accuracy per
  training seed): mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n), with s the sample standard
  deviation (ddof=1).

  Returns {mean, ci95: [lo, hi], std, n} (the key is ci95 whatever ``confidence``). The
  interval is for the mean over seeds, assuming seeds are independent draws of a roughly
  normal quantity; with 3 seeds t = 4.30, so it is wide by design. n = 1 gives ci95
  [nan, nan] (one seed says nothing about the spread), n = 0 gives nan everywhere; n >= 2
  with identical values gives the zero-width interval [mean, mean].
  """
  from scipy import stats  # pylint: disable=import-outside-toplevel  # (a dependency of jax)

  x = np.asarray(values, dtype=np.float64)
  n = int(x.size)
  if n == 0:
    return {"mean": float("nan"), "ci95": [float("nan")] * 2, "std": float("nan"), "n": 0}
  mean = float(x.mean())
  if n == 1:
    return {"mean": mean, "ci95": [float("nan")] * 2, "std": float("nan"), "n": 1}
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
  return {"mean": mean, "ci95": [mean - half, mean + half], "std": std, "n": n}


def _paired(scores_a, scores_b) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(scores_a, Mapping) != isinstance(scores_b, Mapping):
    raise TypeError("scores_a and scores_b must both be mappings {id: score} or both sequences")
  if isinstance(scores_a, Mapping):
    if set(scores_a) != set(scores_b):
      only_a, only_b = set(scores_a) - set(scores_b), set(scores_b) - set(scores_a)
      raise ValueError(
        f"example ids differ: {len(only_a)} only in scores_a (e.g. {sorted(only_a)[:3]}), "
        f"{len(only_b)} only in scores_b (e.g. {sorted(only_b)[:3]})"
      )
    ids = sorted(scores_a)
    scores_a, scores_b = [scores_a[i] for i in ids], [scores_b[i] for i in ids]
  a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f"paired scores need equal 1-D lengths, got {a.shape} and {b.shape}")
  if a.size == 0:
    raise ValueError("paired scores are empty")
  return a, b


def paired_bootstrap(
  scores_a: Sequence[float] | Mapping[Hashable, float],
  scores_b: Sequence[float] | Mapping[Hashable, float],
  n: int = 10000,
  seed: int = 0,
) -> dict:
  """Paired bootstrap over examples of the difference of mean scores, A - B.

  ``scores_a`` and ``scores_b`` are per-example scores of two methods on the same examples:
  two mappings {example id: score} (paired by id; the id sets must be equal) or two
  sequences in the same example order. Each of ``n`` replicates resamples the examples with
  replacement (the same examples for A and B, so the pairing is kept) and takes the mean
  difference.

  Returns {diff (observed mean of A - B), ci95 ([2.5, 97.5] percentiles of the replicates),
  p_value, n_examples, n_resamples}. The p-value is two-sided for "no difference", from the
  replicates shifted to the null (mean 0): p = (1 + #{|d* - diff| >= |diff|}) / (n + 1).
  Identical inputs give diff 0 and p 1. Deterministic by ``seed``.
  """
  a, b = _paired(scores_a, scores_b)
  d = a - b
  diff = float(d.mean())
  rng = np.random.default_rng(seed)
  reps = np.empty(n, np.float64)
  chunk = max(1, 2_000_000 // d.size)  # bounds the index matrix to ~16 MB
  for start in range(0, n, chunk):
    stop = min(n, start + chunk)
    reps[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
  extreme = int(np.sum(np.abs(reps - diff) >= abs(diff) - 1e-12))
  lo, hi = np.percentile(reps, [2.5, 97.5])
  return {
    "diff": diff,
    "ci95": [float(lo), float(hi)],
    "p_value": (1 + extreme) / (n + 1),
    "n_examples": int(d.size),
    "n_resamples": n,
  }
