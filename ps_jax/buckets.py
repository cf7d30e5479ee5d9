"""Static-shape buckets: sizes padded up so varying workloads compile a bounded set of programs."""

from __future__ import annotations

from collections.abc import Sequence

# Default length buckets: powers of two from 16 (prompt and branch lengths).
DEFAULT_LENGTH_BUCKETS = tuple(2**i for i in range(4, 16))


def bucket(n: int, buckets: Sequence[int], *, what: str) -> int:
  """Smallest bucket >= n; a clear error naming `what` and the limit when none fits."""
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"{what} is {n}, above the largest configured bucket {max(buckets)}")
