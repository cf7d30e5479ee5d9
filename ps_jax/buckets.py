"""Static-shape buckets: sizes padded up so varying workloads compile a bounded set of programs."""

from __future__ import annotations

from collections.abc import Sequence

# Tokens per prefill chunk (`PrefillConfig.chunk`): a prompt is processed this many at a time.
# Keys per step of its blockwise attention (`PrefillConfig.kv_block`). SmolLM2, 2,048 tokens on
# a 2-core CPU: chunk 512 / block 256 3.2 s; 256 / 256 3.7 s; 1024 / 256 3.4 s; 512 / 512 3.3 s.
PREFILL_CHUNK = 512
KV_BLOCK = 256


def chunk_buckets(step: int = KV_BLOCK, max_len: int = 2**15, min_len: int = 16) -> tuple[int, ...]:
  """Powers of two from min_len below `step`, then every multiple of `step` up to max_len:
  a length above the step is padded by less than one step (2,163 -> 2,304 with 256)."""
  small = []
  n = min_len
  while n < step:
    small.append(n)
    n *= 2
  return (*small, *range(step, max_len + 1, step))


# Default length buckets (prompt and branch lengths): 16, 32, 64, 128, then 256, 512, 768, ...
DEFAULT_LENGTH_BUCKETS = chunk_buckets()


def bucket(n: int, buckets: Sequence[int], *, what: str) -> int:
  """Smallest bucket >= n; a clear error naming `what` and the limit when none fits."""
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"{what} is {n}, above the largest configured bucket {max(buckets)}")
