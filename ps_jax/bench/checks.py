"""Checks a TTFT run makes on its own device before timing: that the requested prefill
attention backend runs (with a fallback), that the torch reference computes what ps_jax
computes, and that mixed branch lengths inside one bucket compile once."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax import generation, synthesis, workers
from ps_jax.bench import inputs
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache import KVCache
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.partial(jax.jit, static_argnames=("graphdef", "prefill"))
def _prefill_last_logits(graphdef, params, tokens, prefix, offsets, *, prefill):
  """fp32 logits [B, V] of the last token of tokens [B, T] prefilled over `prefix`."""
  model = nnx.merge(graphdef, params)
  b, t = tokens.shape
  cache = KVCache.init(model.config, b, t + 1, model.dtype)  # as generate_ids: one slot more
  positions = offsets[:, None] + jnp.arange(t)[None, :]
  lengths = jnp.full((b,), t, jnp.int32)
  hidden, _ = model.prefill(
    tokens, positions, cache, lengths=lengths, prefix=prefix, config=prefill
  )
  return model.logits(hidden[:, -1])


def select_prefill(
  model, requested: PrefillConfig, *, prompt_tokens: int = 300, seed: int = 0
) -> tuple[PrefillConfig, dict[str, Any]]:
  """(the prefill config to use, a record): `requested` runs a prompt over a two-branch
  prefix and is compared with the default (XLA, blockwise); where it fails (e.g. cuDNN flash
  attention on an unsupported GPU, dtype or shape) the default is used and the record says
  why."""
  record: dict[str, Any] = {"requested": dataclasses.asdict(requested)}
  if requested == DEFAULT_PREFILL:
    record.update(used=dataclasses.asdict(requested), fallback=None)
    return requested, record
  rng = np.random.default_rng(seed)
  vocab = model.config.vocab_size
  branch = [rng.integers(3, vocab, 40).tolist(), rng.integers(3, vocab, 24).tolist()]
  caches = workers.encode_branches(model, None, [branch]).caches
  prefix, lmax = synthesis.build_prefix(model.config, caches)
  tokens = jnp.asarray(rng.integers(3, vocab, (1, prompt_tokens)), jnp.int32)
  graphdef, params = nnx.split(model)

  def logits(cfg):
    return np.asarray(_prefill_last_logits(graphdef, params, tokens, prefix, lmax, prefill=cfg))

  reference = logits(DEFAULT_PREFILL)
  try:
    got = logits(requested)
  except Exception as e:  # pylint: disable=broad-except  (unsupported backend/shape)
    record.update(
      used=dataclasses.asdict(DEFAULT_PREFILL), fallback=f"{type(e).__name__}: {e}"[:500]
    )
    return DEFAULT_PREFILL, record
  record.update(
    used=dataclasses.asdict(requested),
    fallback=None,
    max_abs_diff_vs_default=_max_diff(got, reference),
    argmax_agrees=bool(np.argmax(got) == np.argmax(reference)),
  )
  return requested, record


def torch_ps_parity(drivers, branch_ids: Sequence[Sequence[int]], latent: Sequence[int]):
  """First-token logits of ps_jax parallel_synthesis (`synthesis_logits`, the forward
  `synthesize` runs) and of the torch reference (`TorchPS`) over the same branch ids, each
  branch computed by its own framework: max |diff|, argmax agreement, logit scale."""
  model = drivers.model
  branches = workers.encode_branches(model, None, [list(map(list, branch_ids))])
  ps = synthesis.synthesis_logits(
    model, branches, np.asarray([latent]), method="parallel_synthesis", adapter=drivers.adapter
  )
  ps = np.asarray(ps, np.float32)[0, -1]
  tps = drivers.torch_ps
  ref = tps.first_logits([tps.branch_kv(ids) for ids in branch_ids], latent).cpu().numpy()
  return {
    "branch_lengths": [len(b) for b in branch_ids],
    "synth_prompt_tokens": len(latent),
    "max_abs_diff": _max_diff(ps, ref),
    "max_abs_logit": float(np.max(np.abs(ref))),
    "argmax_agrees": bool(np.argmax(ps) == np.argmax(ref)),
  }


def compile_check(drivers, config, log: Callable[[str], None]) -> dict[str, Any]:
  """Parallel-Synthesis over several branch lengths inside one length bucket: programs
  compiled by each jitted piece (`fn._cache_size()` growth), expected 1 each."""
  lengths = list(config.compile_check_lengths)
  if not lengths:
    return {}
  buckets = {bucket(n, DEFAULT_LENGTH_BUCKETS, what="branch length") for n in lengths}
  fns = {
    "encode_branches (_prefill_rows)": workers._prefill_rows,  # pylint: disable=protected-access
    "PrefixBuilder (_build_prefix)": synthesis.PrefixBuilder.program,
    "_prefill": generation._prefill,  # pylint: disable=protected-access
    "_decode": generation._decode,  # pylint: disable=protected-access
  }

  def sizes():
    return {k: f._cache_size() for k, f in fns.items()}  # pylint: disable=protected-access

  before, per_length, n = sizes(), [], config.compile_check_branches
  model, tok = drivers.model, drivers.tokenizer
  base = inputs.branch_ids(model, tok, max(lengths), config)
  for length in lengths:
    step = sizes()
    branches = workers.encode_branches(model, tok, [[base[:length]] * n])
    if tok is not None:
      ttft = synthesis.synthesize(
        model,
        tok,
        branches,
        [config.question],
        method="parallel_synthesis",
        adapter=drivers.adapter,
        max_new_tokens=1,
        prefill=drivers.prefill,
      ).ttft_s
    else:  # no tokenizer for the templates: the same jitted pieces on random prompt ids
      ps, _ = drivers.parallel_synthesis(
        branches, inputs.prompts_for(model, None, n, config).latent
      )
      ps.once()
      ttft = ps.once().seconds
    now = sizes()
    per_length.append(
      {"branch_length": length, "ttft_s": ttft, "new_programs": {k: now[k] - step[k] for k in now}}
    )
  after = sizes()
  programs = {k: after[k] - before[k] for k in after}
  log(f"compile check: lengths {lengths} (buckets {sorted(buckets)}): programs {programs}")
  return {
    "num_branches": n,
    "branch_lengths": lengths,
    "length_buckets": sorted(buckets),
    "api": "ps_jax.synthesize" if tok is not None else "jitted pieces",
    "programs_compiled": programs,
    "per_length": per_length,
    "compiled_once": len(buckets) == 1 and all(v <= 1 for v in programs.values()),
  }
