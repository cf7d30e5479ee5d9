"""Static-shape buckets: sizes padded up so varying workloads compile a bounded set of programs."""

from __future__ import annotations

from collections.abc import Sequence

# Tokens per prefill chunk (`PrefillConfig.chunk`): a prompt is processed this many at a time.
PREFILL_CHUNK = 256


def chunk_buckets(
  chunk: int = PREFILL_CHUNK, max_len: int = 2**15, min_len: int = 16
) -> tuple[int, ...]:
  """Powers of two from min_len below `chunk`, then every multiple of `chunk` up to max_len:
  a length above the chunk is padded by less than one chunk (2,163 -> 2,304 with 256)."""
  small = []
  n = min_len
  while n < chunk:
    small.append(n)
    n *= 2
  return (*small, *range(chunk, max_len + 1, chunk))


# Default length buckets (prompt and branch lengths): 16, 32, 64, 128, then 256, 512, 768, ...
DEFAULT_LENGTH_BUCKETS = chunk_buckets()


def bucket(n: int, buckets: Sequence[int], *, what: str) -> int:
  """Smallest bucket >= n; a clear error naming `what` and the limit when none fits."""
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"{what} is {n}, above the largest configured bucket {max(buckets)}")
