"""Static-shape buckets: sizes padded up so varying workloads compile a bounded set of programs."""

from __future__ import annotations

from collections.abc import Sequence

# Tokens per prefill chunk (`PrefillConfig.chunk`): a prompt is processed this many at a time.
# Keys per step of its blockwise attention (`PrefillConfig.kv_block`). SmolLM2, 2,048 tokens on
# a 2-core CPU: chunk 512 / block 256 3.2 s; 256 / 256 3.7 s; 1024 / 256 3.4 s; 512 / 512 3.3 s.
# A prompt is split into near-equal chunks of at most PREFILL_CHUNK tokens.
PREFILL_CHUNK = 512
KV_BLOCK = 256


def chunk_buckets(
  step: int = KV_BLOCK, max_len: int = 2**15, min_len: int = 16, fine_below: int = 1024
) -> tuple[int, ...]:
  """Powers of two from min_len below step / 2, multiples of step / 2 below fine_below, then
  multiples of step up to max_len: a prompt is padded by less than a quarter above 128 tokens
  (357 -> 384, 2,163 -> 2,304 with step 256); `Transformer.prefill` splits a bucket into
  near-equal chunks, so no chunk of padding is computed."""
  half = step // 2
  small = []
  n = min_len
  while n < half:
    small.append(n)
    n *= 2
  return (*small, *range(half, fine_below, half), *range(fine_below, max_len + 1, step))


# Default length buckets (prompt and branch lengths): 16, 32, 64, then 128, 256, ... 896, then
# 1024, 1280, 1536, ...
DEFAULT_LENGTH_BUCKETS = chunk_buckets()


def bucket(n: int, buckets: Sequence[int], *, what: str) -> int:
  """Smallest bucket >= n; a clear error naming `what` and the limit when none fits."""
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"{what} is {n}, above the largest configured bucket {max(buckets)}")
