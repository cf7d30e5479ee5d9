"""The three attentions agree: `attend` (the reference), `attend_dpa` (one
jax.nn.dot_product_attention over the concatenated sources; its XLA implementation here) and
`attend_blocks` (an online softmax over key blocks).

Random inputs with several KV sources (a prefix, a cache, a chunk), per-query and broadcast
masks, padding, rows with no visible key in one source or in all of them, GQA and MHA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.model import attention
from ps_jax.model.attention import BlockSource, array_source, attend_blocks

attend = jax.jit(attention.attend)
attend_dpa = jax.jit(attention.attend_dpa, static_argnames="implementation")

TOL = 1e-5


def _sources(seed, lengths=(10, 7, 5), b=3, t=5, k=2, h=8, per_query=(False, True, True)):
  """Sources with random masks; source 0 (a "prefix", mask [B, 1, S]) hides everything from
  row 1, and row 2 sees nothing at all in any source."""
  rng = np.random.default_rng(seed)
  srcs = []
  for i, (s, pq) in enumerate(zip(lengths, per_query, strict=True)):
    kk = jnp.asarray(rng.normal(size=(b, s, k, h)) * 2.0, jnp.float32)
    vv = jnp.asarray(rng.normal(size=(b, s, k, h)), jnp.float32)
    mask = rng.random((b, t if pq else 1, s)) > 0.4
    mask[:, :, 0] = True  # every other row sees at least one key of every source
    if i == 0:
      mask[1] = False
    mask[2] = False
    srcs.append((kk, vv, jnp.asarray(mask)))
  return srcs


def _query(seed, b=3, t=5, n=4, h=8):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, n, h)) * 2.0, jnp.float32)


@functools.partial(jax.jit, static_argnames="block")
def _blocks(q, srcs, block):
  return attend_blocks(q, [array_source(*s, block) for s in srcs], block=block, num_kv_heads=2)


def _diff(a, b):
  return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (6, 1)], ids=["gqa", "mha", "mqa"])
def test_attend_dpa_equals_attend(heads):
  n, k = heads
  srcs = _sources(0, k=k)
  q = _query(1, n=n)
  ref = attend(q, srcs)
  for subset in (srcs[:1], srcs[1:], srcs):
    d = _diff(attend_dpa(q, subset), attend(q, subset))
    print(f"\n[{n}/{k} heads, {len(subset)} sources] attend_dpa vs attend {d:.1e}")
    assert d <= TOL
  assert np.isfinite(np.asarray(ref)).all()


@pytest.mark.parametrize("block", [1, 3, 4, 16])
def test_attend_blocks_equals_attend(block):
  srcs = _sources(2)
  q = _query(3)
  ref = attend(q, srcs)
  ours = _blocks(q, srcs, block)
  d = _diff(ours, ref)
  print(f"\n[block {block}] attend_blocks vs attend {d:.1e}")
  assert d <= TOL


def test_all_masked_rows_are_finite_and_agree():
  """A row with no visible key anywhere gets the uniform average in all three (never read)."""
  srcs = _sources(4)
  q = _query(5)
  ref = np.asarray(attend(q, srcs))[2]
  uniform = np.concatenate([np.asarray(v)[2] for _, v, _ in srcs]).mean(0)  # [K, H]
  np.testing.assert_allclose(ref, np.repeat(uniform, 2, axis=0)[None].repeat(5, 0), atol=1e-6)
  for ours in (
    attend_dpa(q, srcs),
    _blocks(q, srcs, 3),
  ):
    assert np.isfinite(np.asarray(ours)).all()
    assert _diff(ours[2], ref) <= TOL


def test_masked_slots_never_matter():
  """Changing keys and values at masked slots (e.g. to huge values) changes nothing."""
  srcs = _sources(6)
  q = _query(7)
  junk = []
  for k, v, m in srcs:
    hidden = ~jnp.any(m, axis=1)[:, :, None, None]  # [B, S, 1, 1]: slots no query of a row sees
    junk.append((jnp.where(hidden, 1e4, k), jnp.where(hidden, -1e4, v), m))
  for fn in (
    attend_dpa,
    functools.partial(_blocks, block=4),
  ):
    assert _diff(fn(q, junk)[:2], fn(q, srcs)[:2]) <= TOL


def test_attend_blocks_traced_block_count_reads_only_what_it_visits():
  """A source visiting fewer blocks (a traced count) equals attend over the visited slots."""
  (k, v, mask), *_ = _sources(8, lengths=(12, 3, 3))
  q = _query(9)

  def run(num_blocks):
    def read(start, size):
      return (jax.lax.dynamic_slice_in_dim(x, start, size, axis=1) for x in (k, v))

    src = BlockSource(read, lambda slots: jnp.take(mask, slots, axis=-1), 12, num_blocks)
    return attend_blocks(q, [src], block=4, num_kv_heads=2)

  two = jax.jit(run)(jnp.int32(2))
  d = _diff(two[:2], attend(q, [(k[:, :8], v[:, :8], mask[..., :8])])[:2])
  assert d <= TOL


def test_bf16_inputs_stay_close():
  """bf16 q, k, v: the merged outputs stay within bf16 rounding of the fp32 reference."""
  srcs = _sources(10)
  q = _query(11)
  ref = attend(q, srcs)
  lo = [tuple(x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in s) for s in srcs]
  qb = q.astype(jnp.bfloat16)
  for ours in (
    attend_dpa(qb, lo),
    _blocks(qb, lo, 4),
  ):
    assert ours.dtype == jnp.bfloat16
    assert _diff(ours[:2].astype(jnp.float32), ref[:2]) <= 0.05


def test_unknown_implementation_is_named():
  srcs = _sources(0)
  with pytest.raises(ValueError, match="implementation='flash'"):
    attend_dpa(_query(1), srcs, implementation="flash")
