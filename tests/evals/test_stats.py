"""Wilson intervals against published values; t intervals and the paired bootstrap against hand
computations."""

import math

import numpy as np
import pytest

from ps_jax.evals.stats import mean_ci, paired_bootstrap, wilson_interval


@pytest.mark.parametrize(
  "k, n, expect",
  [
    # Newcombe (1998), Statistics in Medicine 17:857, table I (Wilson score, no correction).
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
  ],
)
def test_matches_newcombe_table(k, n, expect):
  lo, hi = wilson_interval(k, n)
  assert lo == pytest.approx(expect[0], abs=1e-4) and hi == pytest.approx(expect[1], abs=1e-4)


def test_edges():
  assert all(math.isnan(x) for x in wilson_interval(0, 0))
  lo, hi = wilson_interval(10, 10)
  assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73


# --- mean_ci -----------------------------------------------------------------------------------


def test_mean_ci_matches_t_table():
  # 3 seeds: mean 2, s = 1, t(0.975, df=2) = 4.303 (any t table) -> 2 -+ 4.303 / sqrt(3).
  r = mean_ci([1.0, 2.0, 3.0])
  assert r["mean"] == 2.0 and r["std"] == pytest.approx(1.0) and r["n"] == 3
  assert r["ci95"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)])
  # 5 values: mean 0.7, s = sqrt(0.025), t(0.975, df=4) = 2.776.
  r = mean_ci([0.5, 0.6, 0.7, 0.8, 0.9])
  half = 2.776445 * math.sqrt(0.025) / math.sqrt(5)
  assert r["mean"] == pytest.approx(0.7) and r["ci95"] == pytest.approx([0.7 - half, 0.7 + half])
  # 90%: t(0.95, df=2) = 2.920.
  assert mean_ci([1.0, 2.0, 3.0], confidence=0.9)["ci95"][1] == pytest.approx(
    2 + 2.919986 / math.sqrt(3)
  )


def test_mean_ci_edges():
  assert mean_ci([4.0, 4.0, 4.0])["ci95"] == [4.0, 4.0]
  one = mean_ci([0.5])
  assert one["mean"] == 0.5 and one["n"] == 1 and all(math.isnan(x) for x in one["ci95"])
  none = mean_ci([])
  assert none["n"] == 0 and math.isnan(none["mean"]) and all(math.isnan(x) for x in none["ci95"])


# --- paired_bootstrap --------------------------------------------------------------------------


def test_identical_scores_give_no_difference():
  a = [1, 0, 1, 1, 0, 1, 0, 0]
  r = paired_bootstrap(a, list(a))
  assert r["diff"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0
  assert r["n_examples"] == 8 and r["n_resamples"] == 10000


def test_clear_difference_is_significant():
  rng = np.random.default_rng(1)
  a = (rng.random(200) < 0.8).astype(float)
  b = (rng.random(200) < 0.4).astype(float)
  r = paired_bootstrap(a, b)
  assert r["diff"] == pytest.approx(a.mean() - b.mean())
  assert r["p_value"] < 0.01 and r["ci95"][0] > 0
  # The interval is about diff -+ 1.96 standard errors of the paired differences.
  se = (a - b).std() / math.sqrt(200)
  assert r["ci95"] == pytest.approx([r["diff"] - 1.96 * se, r["diff"] + 1.96 * se], abs=0.02)
  back = paired_bootstrap(b, a)  # antisymmetric
  assert back["diff"] == -r["diff"] and back["p_value"] < 0.01


def test_small_difference_is_not_significant():
  a = [1.0] * 10 + [0.0] * 10
  b = [1.0] * 9 + [0.0] * 11  # one example apart on 20
  assert paired_bootstrap(a, b)["p_value"] > 0.2


def test_tiny_case_against_the_exact_bootstrap_distribution():
  # Differences d = (0, 1, 1, 1): a replicate's mean is k/4 with k ~ Binomial(4, 3/4):
  # P(0) = 1/256, P(1/4) = 12/256, P(1/2) = 54/256, P(3/4) = 108/256, P(1) = 81/256.
  # CDF: 0.0039, 0.0508, 0.262, 0.684, 1 -> 2.5th percentile 1/4, 97.5th percentile 1.
  # Shifted to the null, |d* - 3/4| >= 3/4 only for d* = 0: p = 1/256.
  r = paired_bootstrap([1, 1, 1, 1], [1, 0, 0, 0])
  assert r["diff"] == 0.75 and r["ci95"] == [0.25, 1.0]
  assert r["p_value"] == pytest.approx(1 / 256, abs=0.002)
  # d = (0, 1): means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: p = 1/2, CI [0, 1].
  r = paired_bootstrap([0, 1], [0, 0])
  assert r["ci95"] == [0.0, 1.0] and r["p_value"] == pytest.approx(0.5, abs=0.02)


def test_deterministic_by_seed_and_paired_by_id():
  a = {f"ex{i}": float(i % 3 == 0) for i in range(30)}
  b = {f"ex{i}": float(i % 2 == 0) for i in range(30)}
  r = paired_bootstrap(a, b, n=2000, seed=3)
  assert r == paired_bootstrap(a, b, n=2000, seed=3)
  assert r != paired_bootstrap(a, b, n=2000, seed=4)
  # Pairing is by id, not by insertion order.
  shuffled = dict(reversed(list(b.items())))
  assert paired_bootstrap(a, shuffled, n=2000, seed=3) == r
  ids = sorted(a)
  assert paired_bootstrap([a[i] for i in ids], [b[i] for i in ids], n=2000, seed=3) == r
  # Many examples: the replicates are drawn in chunks, with the same result per seed.
  big = np.arange(5000) % 2
  assert paired_bootstrap(big, 1 - big, n=500)["p_value"] > 0.05


def test_bad_pairs():
  with pytest.raises(ValueError, match="ids differ"):
    paired_bootstrap({"a": 1, "b": 0}, {"a": 1, "c": 0})
  with pytest.raises(ValueError, match="equal 1-D lengths"):
    paired_bootstrap([1, 0], [1])
  with pytest.raises(ValueError, match="empty"):
    paired_bootstrap([], [])
  with pytest.raises(TypeError, match="both"):
    paired_bootstrap({"a": 1}, [1])
