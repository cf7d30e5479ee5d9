"""Static-shape buckets and batching never change an example's logits; padding is never read.

Example A: 1 branch of 5 tokens, 4 synth tokens. Example B: 3 branches of 7, 2, 9 tokens,
6 synth tokens. Each is run alone, batched together (R padded to 4, A's three absent branches
have length 0; synth tokens right-padded with `lengths=`), in the other order, and with R, S and
T padded to much larger buckets. Method parallel_synthesis with a random non-zero adapter, so
the mapper's per-example features (N counts only real branches, L_i the real lengths) are
exercised by the padding too; pcw is checked on the batched layout as well.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import ps_jax as ps
from synth_helpers import logits_np, max_diff, random_adapter, report, valid_rows_diff

FAMILY = "llama3_tied"
TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tiny):
  _, model = tiny(FAMILY)
  adapter = random_adapter(model.config, seed=9)
  a, b1, b2, b3, syn_a, syn_b = helpers.random_prompts([5, 7, 2, 9, 4, 6], seed=51)
  ex_a, ex_b = [a], [b1, b2, b3]

  def run(examples, synth, method="parallel_synthesis", width=None, **buckets):
    branches = ps.encode_branches(model, None, examples, **buckets)
    tokens, lengths = helpers.right_pad(synth, width)
    return branches, logits_np(model, branches, tokens, method, adapter=adapter, lengths=lengths)

  alone_a = run([ex_a], [syn_a])[1]
  alone_b = run([ex_b], [syn_b])[1]
  batched_branches, batched = run([ex_a, ex_b], [syn_a, syn_b])
  return dict(
    model=model,
    adapter=adapter,
    run=run,
    ex_a=ex_a,
    ex_b=ex_b,
    syn_a=syn_a,
    syn_b=syn_b,
    alone_a=alone_a,
    alone_b=alone_b,
    batched=batched,
    batched_branches=batched_branches,
  )


def test_batched_equals_alone(setup):
  s = setup
  caches = s["batched_branches"].caches
  assert caches.k.shape[2:4] == (4, 16)
  np.testing.assert_array_equal(np.asarray(caches.lengths), [[5, 0, 0, 0], [7, 2, 9, 0]])
  d = max(
    max_diff(s["batched"][0, :4], s["alone_a"][0]), max_diff(s["batched"][1, :6], s["alone_b"][0])
  )
  report("batched (A: N=1, B: N=3) vs alone", d)
  assert d <= TOL


def test_batch_order_does_not_matter(setup):
  s = setup
  _, flipped = s["run"]([s["ex_b"], s["ex_a"]], [s["syn_b"], s["syn_a"]])
  d = max(max_diff(flipped[0, :6], s["alone_b"][0]), max_diff(flipped[1, :4], s["alone_a"][0]))
  report("batched in reverse order vs alone", d)
  assert d <= TOL


def test_larger_buckets_do_not_change_logits(setup):
  s = setup
  branches, big = s["run"](
    [s["ex_a"], s["ex_b"]],
    [s["syn_a"], s["syn_b"]],
    width=11,
    branch_buckets=(8,),
    length_buckets=(64,),
  )
  assert branches.caches.k.shape[2:4] == (8, 64)
  d = max(max_diff(big[0, :4], s["alone_a"][0]), max_diff(big[1, :6], s["alone_b"][0]))
  report("R=8, S=64, T=11 buckets vs alone (R=1|4, S=16)", d)
  assert d <= TOL


def test_pcw_batched_equals_alone(setup):
  s = setup
  _, alone_b = s["run"]([s["ex_b"]], [s["syn_b"]], method="pcw")
  _, batched = s["run"]([s["ex_a"], s["ex_b"]], [s["syn_a"], s["syn_b"]], method="pcw")
  d = max_diff(batched[1, :6], alone_b[0])
  report("pcw batched vs alone", d)
  assert d <= TOL


def _fill_padding(caches, value_k, value_v, positions):
  """Caches with every padding slot (absent branches included) overwritten."""
  mask = caches.mask()[None, ..., None, None]  # [1, B, R, S, 1, 1]
  return caches.replace(
    k=jnp.where(mask, caches.k, value_k),
    v=jnp.where(mask, caches.v, value_v),
    positions=jnp.where(caches.mask(), caches.positions, positions),
  )


def test_padding_slots_are_never_read(setup):
  s = setup
  model, adapter = s["model"], s["adapter"]
  caches = s["batched_branches"].caches
  rng = np.random.default_rng(0)
  garbage = lambda: jnp.asarray(1e3 * rng.standard_normal(caches.k.shape), jnp.float32)  # noqa: E731
  junk = _fill_padding(
    caches,
    garbage(),
    garbage(),
    jnp.asarray(rng.integers(-5000, 5000, caches.positions.shape), jnp.int32),
  )
  tokens, lengths = helpers.right_pad([s["syn_a"], s["syn_b"]])
  for method in ("parallel_synthesis", "pcw"):
    clean = logits_np(model, caches, tokens, method, adapter=adapter, lengths=lengths)
    dirty = logits_np(model, junk, tokens, method, adapter=adapter, lengths=lengths)
    d = valid_rows_diff(clean, dirty, lengths)
    report(f"{method}: padding K/V = N(0, 1e3^2), random positions", d)
    assert d == 0.0


def test_nonfinite_padding_is_never_read(setup):
  s = setup
  model = s["model"]
  caches = s["batched_branches"].caches
  junk = _fill_padding(caches, jnp.nan, jnp.inf, caches.positions)
  tokens, lengths = helpers.right_pad([s["syn_a"], s["syn_b"]])
  clean = logits_np(model, caches, tokens, "pcw", lengths=lengths)
  dirty = logits_np(model, junk, tokens, "pcw", lengths=lengths)
  assert valid_rows_diff(clean, dirty, lengths) == 0.0
