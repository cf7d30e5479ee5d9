"""Device-synchronised timing of jitted calls, with compilation excluded."""

from __future__ import annotations

import time

import jax


def timed_call(fn, *args, **kwargs):
  """(result, seconds) of fn(*args, **kwargs), synchronised on its outputs.

  If the call compiled a new program (the jit cache grew), it is run once more and only the
  second run is timed, so timings never include compilation. fn must not donate its inputs.
  """
  before = fn._cache_size()  # pylint: disable=protected-access
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  seconds = time.perf_counter() - start
  if fn._cache_size() > before:  # pylint: disable=protected-access
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    seconds = time.perf_counter() - start
  return out, seconds
