"""Where a ps_jax decode step's time goes on XLA CPU, measured piece by piece (an appendix of
the forward benchmark: `launch.bench_forward` with `analysis=True`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ps_jax.bench import report
from ps_jax.bench.timing import seconds_per_call
from ps_jax.model import Transformer


def decode_step_analysis(
  model: Transformer,
  *,
  batches: Sequence[int] = (1, 8),
  cache_len: int = 256,
  repeats: int = 5,
  bandwidth_mib: int = 512,
) -> dict[str, Any]:
  """Where the time of one ps_jax decode step goes, measured piece by piece (ms per call).

  For each batch size, with a KV cache of `cache_len` slots half full:
  * step: one jitted decode step (forward of 1 token per row with the cache, LM head,
    argmax, cache write; cache donated), called from Python;
  * weight_matmuls: only the step's weight matmuls (q, k, v, o, gate, up, down per layer,
    as a scan, plus the LM head), the same bytes of weights read: the floor for XLA's
    matrix-vector products on this machine;
  * lm_head: the LM head matmul + argmax alone;
  * attention: the attention of 1 query token over the padded cache, all layers;
  * attention_kv_major: the same attention with the cache laid out [L, B, K, S, H] (each
    kv head's slots contiguous) instead of ps_jax's [L, B, S, K, H];
  * cache_update: writing one token's K and V into the cache of all layers (donated).
  Plus the memory roofline: parameter bytes / measured read bandwidth (the faster of a jitted
  sum and a jitted matrix-vector product over `bandwidth_mib` MiB), about the least time an
  implementation needs to stream the weights once.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from ps_jax.cache import KVCache  # pylint: disable=import-outside-toplevel
  from ps_jax.model.layers import attend  # pylint: disable=import-outside-toplevel

  cfg = model.config
  graphdef, params = nnx.split(model)
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))

  # Read bandwidth: the faster of a jitted sum and a jitted matrix-vector product over a
  # buffer far larger than the caches (both stream it once from memory).
  big = jnp.ones((bandwidth_mib * 2**20 // 4096, 1024), jnp.float32)
  vec = jnp.ones((1024,), jnp.float32)
  reads = {
    "sum": seconds_per_call(jax.jit(jnp.sum), lambda _, a=big: (a,), repeats=repeats, calls=4),
    "gemv": seconds_per_call(
      jax.jit(jnp.matmul), lambda _, a=big: (a, vec), repeats=repeats, calls=4
    ),
  }
  by = {k: big.nbytes / r["median"] / 1e9 for k, r in reads.items()}
  bandwidth = max(by.values()) * 1e9
  del big
  out: dict[str, Any] = {
    "cache_len": cache_len,
    "param_bytes": param_bytes,
    "read_bandwidth_gb_s": bandwidth / 1e9,
    "read_bandwidth_by_method_gb_s": by,
    "roofline_weights_ms": 1e3 * param_bytes / bandwidth,
    "batches": {},
  }

  def step(params, cache, tok):
    m = nnx.merge(graphdef, params)
    pos = cache.end_index[:, None]
    hidden, cache = m.hidden_states(
      tok[:, None], pos, cache, lengths=jnp.ones_like(cache.end_index)
    )
    return jnp.argmax(m.logits(hidden[:, 0]), axis=-1).astype(jnp.int32), cache

  def weight_matmuls(params, x):  # x [B, D]
    m = nnx.merge(graphdef, params)
    a, p = m.blocks.attn, m.blocks.mlp
    ws = (
      a.q.kernel[...],
      a.k.kernel[...],
      a.v.kernel[...],
      a.o.kernel[...],
      p.gate.kernel[...],
      p.up.kernel[...],
      p.down.kernel[...],
    )

    def layer(x, w):
      wq, wk, wv, wo, wg, wu, wd = w
      kv = (x @ wk).sum(-1, keepdims=True) + (x @ wv).sum(-1, keepdims=True)
      x = x + (x @ wq) @ wo + 1e-6 * kv
      return x + (jax.nn.silu(x @ wg) * (x @ wu)) @ wd, None

    x, _ = jax.lax.scan(layer, x, ws)
    return jnp.argmax(m.logits(x), axis=-1)

  def lm_head(params, x):
    return jnp.argmax(nnx.merge(graphdef, params).logits(x), axis=-1)

  def attention(k, v, mask, q):  # q [B, 1, N, H]; k, v [L, B, S, K, H]
    def layer(q, kv):
      o = attend(q, [(kv[0], kv[1], mask[:, None, :])])
      return q + 1e-6 * o, None

    return jax.lax.scan(layer, q, (k, v))[0]

  def attention_kv_major(k, v, mask, q):  # k, v [L, B, K, S, H]: each head's slots contiguous
    def layer(q, kv):
      kk, vv = kv
      b = q.shape[0]
      qg = q.reshape(b, cfg.num_kv_heads, cfg.queries_per_kv, cfg.head_dim) * cfg.head_dim**-0.5
      s = jnp.einsum("bkgh,bksh->bkgs", qg, kk, preferred_element_type=jnp.float32)
      p = jax.nn.softmax(jnp.where(mask[:, None, None, :], s, -1e30), axis=-1)
      o = jnp.einsum("bkgs,bksh->bkgh", p.astype(vv.dtype), vv)
      return q + 1e-6 * o.reshape(q.shape), None

    return jax.lax.scan(layer, q, (k, v))[0]

  def update(cache, k_new, v_new):
    return cache.append(k_new, v_new, jnp.zeros_like(cache.end_index))

  for b in batches:
    cache = KVCache.init(cfg, b, cache_len, model.dtype)
    cache = cache.replace(end_index=jnp.full((b,), cache_len // 2, jnp.int32))
    tok = jnp.zeros((b,), jnp.int32)
    x = jnp.ones((b, cfg.hidden_size), model.dtype)
    q = jnp.ones((b, 1, cfg.num_heads, cfg.head_dim), model.dtype)
    kv_new = jnp.ones((cfg.num_layers, b, 1, cfg.num_kv_heads, cfg.head_dim), model.dtype)
    state = {"cache": cache}

    def step_args(prev, state=state, tok=tok, b=b):
      if prev is not None:
        state["cache"] = prev[1].replace(end_index=jnp.full((b,), cache_len // 2, jnp.int32))
      return params, state["cache"], tok

    def update_args(prev, state=state, kv_new=kv_new):
      if prev is not None:
        state["cache"] = prev
      return state["cache"], kv_new, kv_new

    pieces = {
      "step": seconds_per_call(jax.jit(step, donate_argnums=1), step_args, repeats=repeats),
      "weight_matmuls": seconds_per_call(
        jax.jit(weight_matmuls), lambda _, x=x: (params, x), repeats=repeats
      ),
      "lm_head": seconds_per_call(jax.jit(lm_head), lambda _, x=x: (params, x), repeats=repeats),
    }
    fresh = KVCache.init(cfg, b, cache_len, model.dtype).replace(
      end_index=jnp.full((b,), cache_len // 2, jnp.int32)
    )
    pieces["attention"] = seconds_per_call(
      jax.jit(attention), lambda _, c=fresh, q=q: (c.k, c.v, c.valid_mask(), q), repeats=repeats
    )
    kt, vt = jnp.swapaxes(fresh.k, 2, 3), jnp.swapaxes(fresh.v, 2, 3)
    pieces["attention_kv_major"] = seconds_per_call(
      jax.jit(attention_kv_major),
      lambda _, c=fresh, k=kt, v=vt, q=q: (k, v, c.valid_mask(), q),
      repeats=repeats,
    )
    del kt, vt
    state["cache"] = fresh
    pieces["cache_update"] = seconds_per_call(
      jax.jit(update, donate_argnums=0), update_args, repeats=repeats
    )
    out["batches"][str(b)] = {
      name: {"ms": 1e3 * s["median"], "ms_min": 1e3 * s["min"], "ms_max": 1e3 * s["max"]}
      for name, s in pieces.items()
    }
  return out


def analysis_markdown(
  a: dict[str, Any], ms_per_step: dict[str, dict[str, float]] | None = None
) -> str:
  """Markdown for a `decode_step_analysis` result. ms_per_step: {"ps_jax": {batch: ms},
  "transformers": {batch: ms}} from the throughput runs, shown beside the pieces."""
  ms_per_step = ms_per_step or {}
  headers = [
    "",
    "step (jit, 1 call)",
    "weight matmuls",
    "LM head",
    "attention",
    "attention, [K, S, H] cache",
    "cache update",
    "weights roofline",
  ]
  extra = [k for k in ("ps_jax", "transformers") if ms_per_step.get(k)]
  headers += [f"{k} decode loop, per step" for k in extra]
  rows = []
  for b, p in a["batches"].items():
    row = [f"batch {b}"] + [
      report.fmt(p[k]["ms"], 2)
      for k in (
        "step",
        "weight_matmuls",
        "lm_head",
        "attention",
        "attention_kv_major",
        "cache_update",
      )
    ]
    row.append(report.fmt(a["roofline_weights_ms"], 2))
    row += [report.fmt(ms_per_step[k].get(b), 2) for k in extra]
    rows.append(row)
  lines = [
    "## Where a decode step's time goes (ps_jax, XLA CPU)",
    "",
    f"Milliseconds per call (median), KV cache of {a['cache_len']} slots half full. "
    f"Parameters: {a['param_bytes'] / 2**20:,.0f} MiB; measured read bandwidth "
    f"{a['read_bandwidth_gb_s']:.1f} GB/s (the faster of a jitted sum and a jitted "
    "matrix-vector product over a large array), so streaming the "
    f"weights once takes {a['roofline_weights_ms']:.1f} ms (the roofline of a memory-bound "
    "decode step).",
    "",
    report.markdown_table(headers, rows),
    "",
  ]
  for b, p in a["batches"].items():
    step, mm = p["step"]["ms"], p["weight_matmuls"]["ms"]
    lines.append(
      f"- Batch {b}: the weight matmuls alone take {mm:.1f} ms, {100 * mm / step:.0f}% of "
      f"the {step:.1f} ms step (the LM head {p['lm_head']['ms']:.1f} ms of it); the step is "
      f"{step / a['roofline_weights_ms']:.2f}x the weights roofline. Attention over the "
      f"padded cache {p['attention']['ms']:.1f} ms ({100 * p['attention']['ms'] / step:.0f}%; "
      f"{p['attention_kv_major']['ms']:.1f} ms with a [K, S, H] cache layout), the cache "
      f"write {p['cache_update']['ms']:.2f} ms."
    )
  return "\n".join(lines) + "\n"


# Findings behind the decode-step table, from this machine (AMD EPYC, 2 cores) on 2026-11-27:
# HLO inspection and one-off prototypes (scripts not part of the benchmark). `launch.bench_forward`
# appends them to the document when it runs the decode-step analysis.
XLA_CPU_DECODE_NOTES = """\
## Findings: what limits decode on XLA CPU

One-off measurements from 2026-11-27 on this machine (idle), beside the tables above; they are
not regenerated by the benchmark.

1. **ps_jax decodes faster than transformers eager** at batch 1 and 8 (ratio in the table).
   transformers' step is mostly Python-side eager overhead: `generate` dispatches dozens of
   torch ops per layer per step from Python (about 40 ms per step at batch 1), while streaming
   the weights once at the measured bandwidth takes about 10 ms (MKL's fp32 matrix-vector
   products are not the limit: 0.05 ms for one 576x1536 matrix). ps_jax runs the whole decode
   loop as one XLA program (`lax.while_loop` in `generation._decode`): no per-step Python or
   dispatch cost.
2. **A ps_jax step at batch 1 is its weight matmuls**, memory-bound matrix-vector products at
   1.5-2x the weights-streaming roofline (table; the measured bandwidth varies between 40 and
   60 GB/s from run to run). Two XLA CPU costs sit between the two:
   - *Scan over layer-stacked weights.* In the optimised HLO of `_decode`, each layer's weight
     slices are copied out of the stacked `[L, ...]` arrays (`dynamic-slice` loop fusions)
     before the dots: XLA CPU's dot kernels take whole buffers. The seven weight matmuls of 30
     layers: scan 15.7 ms (batch 1) / 32.1 ms (batch 8); separate per-layer weight buffers
     14.6 / 16.5 ms; unrolling the scan over static slices of the stacked arrays 112 / 123 ms.
     But a whole decode loop with per-layer weight and cache buffers (30 layers unrolled in the
     `while_loop`) was not faster: 17.7 vs 18.2 ms per step at batch 1, 37.9 vs 30.8 at batch 8
     (same tokens). Keeping the scan (compile time independent of depth) costs little here.
   - *Attention over the `[B, S, K, H]` cache.* XLA transposes every layer's K and V slice into
     `(B, K)`-major copies on every step (`copy` ops of `f32[B, K, S, H]` in the HLO); on a
     `[B, K, S, H]` cache the same attention takes about half the time (table). At these cache
     lengths (192 slots) it does not show end to end: a single-token attention written as
     elementwise products and sums in the cache's own layout (no dot, no transpose) decoded at
     18.19 vs 18.12 ms per step (batch 1) and 31.65 vs 31.47 (batch 8). It will matter for long
     caches, where the transposed copies grow with the cache.
   - The KV-cache write (one token scattered into the donated cache) is in place: 0.01-0.03 ms.
3. The experimental XLA flag `--xla_cpu_use_onednn=true` sped up the scanned weight-matmul chain
   at batch 8 (20 vs 33 ms) but not at batch 1 (15.9 vs 16.7 ms); not adopted.
4. **Machine sharing.** With other processes on the 2 cores, transformers' two OpenMP threads
   (which wait for each other at every op) slowed down by up to 10-20x, XLA by 2-3x; runs whose
   load average exceeds the core count are flagged in the header and are not comparable.
"""
