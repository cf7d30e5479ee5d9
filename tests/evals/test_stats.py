"""Wilson intervals against published values."""

import math

import pytest

from ps_jax.evals.stats import wilson_interval


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
