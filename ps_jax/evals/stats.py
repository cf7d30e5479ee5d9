"""Confidence intervals for accuracies."""

from __future__ import annotations

import math


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
