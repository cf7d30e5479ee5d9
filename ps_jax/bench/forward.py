"""Forward-pass throughput: prefill and decode tokens/s of ps_jax, beside transformers eager.

What is measured (all device-synchronised, compilation excluded by warm-up calls, medians of
`repeats` runs with min/max spreads):

* prefill: one forward over a `prefill_tokens`-token prompt (batch `prefill_batch`) that fills
  a KV cache and picks the first token from the last position's logits. ps_jax: the prefill of
  `generation.generate_ids` (its `prefill_s`). transformers: `model(ids, use_cache=True,
  logits_to_keep=1)` plus the argmax. tok/s = batch * prompt tokens / seconds.
* decode: greedy decoding of exactly `decode_new_tokens` tokens after a
  `decode_prompt_tokens`-token prompt, for each batch size in `decode_batches`. EOS is
  disabled: ps_jax gets the stop id -1, which no token can equal (every row is checked to run
  the full length); transformers gets `min_new_tokens = max_new_tokens`. ps_jax: the decode
  loop of `generate_ids` (its `decode_s`, one forward step per generated token).
  transformers: `generate(do_sample=False)` with a logits processor that notes the time of
  each step; decode time = last step's time - first step's (after the prefill), i.e. N - 1
  steps, generate's per-step overhead included. tok/s = batch * steps / seconds.

Both frameworks see the same token ids. JAX compile time is recorded separately: the warm-up
call's extra time over the median, and JAX's own compile-phase event durations.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ps_jax.bench import report
from ps_jax.generation import generate_ids
from ps_jax.model import Transformer

# A stop id no token can equal: disables EOS so every row decodes the full length.
NEVER_STOP = (-1,)

# Plain English for realistic token ids; tiled to any length (the content does not change the
# amount of work, since every run has a fixed shape and EOS is disabled).
BENCH_TEXT = (
  "The river town woke slowly. Fishermen untied their boats while the baker opened the "
  "shutters and set out bread that was still warm. Children ran along the stone quay, "
  "counting the gulls that circled the masts, and an old clockmaker wound the tower clock "
  "as he had done every morning for forty years. By noon the market square was full: "
  "merchants sold cloth, spices and copper pots, travellers asked the way to the mountain "
  "pass, and a violinist played near the fountain for coins. In the afternoon a storm came "
  "in from the sea, the square emptied, and the rain drummed on the roofs until evening, "
  "when the clouds broke and the lamps were lit one by one along the harbour wall. "
)


@dataclasses.dataclass(frozen=True)
class ForwardBenchConfig:
  prefill_tokens: int = 512
  prefill_batch: int = 1
  decode_prompt_tokens: int = 128
  decode_new_tokens: int = 64
  decode_batches: tuple[int, ...] = (1, 8)
  repeats: int = 5
  warmup: int = 1
  seed: int = 0  # random prompt ids when there is no tokenizer

  def __post_init__(self):
    for name in ("prefill_tokens", "prefill_batch", "decode_prompt_tokens", "repeats"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
    if self.decode_new_tokens < 2:
      raise ValueError(f"decode_new_tokens={self.decode_new_tokens}: must be >= 2")
    if not self.decode_batches or min(self.decode_batches) < 1:
      raise ValueError(f"decode_batches={self.decode_batches}: need batch sizes >= 1")
    if self.warmup < 1:
      raise ValueError(f"warmup={self.warmup}: must be >= 1 (compilation must be excluded)")


def prompt_ids(tokenizer, vocab_size: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
  """[batch, length] int32 prompt ids: windows of BENCH_TEXT's tokens (rows start at
  different offsets), or seeded random ids when tokenizer is None."""
  if tokenizer is None:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(batch, length), dtype=np.int32)
  piece = list(tokenizer.encode(BENCH_TEXT, add_special_tokens=False))
  stride = 17
  need = length + stride * (batch - 1)
  stream = (piece * (need // len(piece) + 1))[:need]
  return np.array([stream[i * stride : i * stride + length] for i in range(batch)], np.int32)


def _ratio(a: dict | None, b: dict | None) -> float | None:
  if not a or not b:
    return None
  return a["median"] / b["median"]


@dataclasses.dataclass
class Timed:
  """One measured call: seconds, forward steps it covered, and the generated ids (if any)."""

  seconds: float
  steps: int = 1
  tokens: np.ndarray | None = None


class PsJaxRunner:
  """ps_jax's side: the prefill and decode loop of `generation.generate_ids`."""

  name = "ps_jax"

  def __init__(self, model: Transformer):
    self.model = model

  def prefill(self, ids: np.ndarray) -> Timed:
    r = generate_ids(self.model, ids.tolist(), max_new_tokens=1, stop_ids=NEVER_STOP)
    return Timed(r.prefill_s)

  def decode(self, ids: np.ndarray, n: int) -> Timed:
    r = generate_ids(self.model, ids.tolist(), max_new_tokens=n, stop_ids=NEVER_STOP)
    if not np.all(r.num_tokens == n):
      raise RuntimeError(f"ps_jax decode stopped early: {r.num_tokens} tokens, expected {n}")
    # The loop feeds all n tokens (the first comes from the prefill): n forward steps.
    return Timed(r.decode_s, n, np.asarray(r.tokens))


class TransformersRunner:
  """transformers' side: a cached forward for prefill, `generate` for decode (see module doc)."""

  name = "transformers"

  def __init__(self, model):
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import LogitsProcessor  # pylint: disable=import-outside-toplevel

    class StepClock(LogitsProcessor):
      """Notes the time of each decode step (generate calls it once per new token, right
      after that step's forward); leaves the scores unchanged."""

      def __init__(self):
        self.times: list[float] = []

      def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores

    self.torch, self.model, self.clock_cls = torch, model, StepClock
    pad = getattr(model.generation_config, "pad_token_id", None)
    self.pad = 0 if pad is None else pad

  def prefill(self, ids: np.ndarray) -> Timed:
    x = self.torch.as_tensor(ids, dtype=self.torch.long)
    with self.torch.inference_mode():
      start = time.perf_counter()
      logits = self.model(input_ids=x, use_cache=True, logits_to_keep=1).logits
      logits[:, -1].argmax(-1)
      return Timed(time.perf_counter() - start)

  def decode(self, ids: np.ndarray, n: int) -> Timed:
    from transformers import LogitsProcessorList  # pylint: disable=import-outside-toplevel

    x = self.torch.as_tensor(ids, dtype=self.torch.long)
    clock = self.clock_cls()
    with self.torch.inference_mode():
      out = self.model.generate(
        x,
        attention_mask=self.torch.ones_like(x),
        do_sample=False,
        min_new_tokens=n,
        max_new_tokens=n,
        pad_token_id=self.pad,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=LogitsProcessorList([clock]),
      )
    if len(clock.times) != n or out.shape[1] != ids.shape[1] + n:
      raise RuntimeError(f"transformers decode ran {len(clock.times)} steps, expected {n}")
    return Timed(clock.times[-1] - clock.times[0], n - 1, out[:, ids.shape[1] :].numpy())


def _measure(runners, call, config: ForwardBenchConfig) -> dict[str, dict[str, Any]]:
  """Warm-up calls of each runner (the first one's JAX compile events recorded), then
  `repeats` rounds that call the runners in turn, so that all frameworks share the machine's
  conditions (other load, thermal state) alike."""
  out = {}
  for r in runners:
    with report.jax_compile_events() as events:
      first = call(r)
    for _ in range(config.warmup - 1):
      call(r)
    out[r.name] = {"first": first, "events": dict(events), "runs": []}
  for _ in range(config.repeats):
    for r in runners:
      out[r.name]["runs"].append(call(r))
  return out


def _entry(
  m: dict[str, Any], batch: int, prompt_tokens: int, jax_program: str | None
) -> dict[str, Any]:
  runs: list[Timed] = m["runs"]
  seconds = report.summarize([t.seconds for t in runs])
  steps = runs[0].steps
  e = {
    "batch": batch,
    "prompt_tokens": prompt_tokens,
    "steps": steps,
    "seconds": seconds,
    "tokens_per_s": report.rate(
      batch * (steps if runs[0].tokens is not None else prompt_tokens), seconds
    ),
    "ms_per_step": 1e3 * seconds["median"] / steps,
    "first_call_s": m["first"].seconds,
  }
  if jax_program is not None:
    # Tracing + lowering + XLA compile of this program, as JAX reports them.
    e["compile_s"] = report.compile_seconds(m["events"], jax_program)
    e["first_call_overhead_s"] = m["first"].seconds - seconds["median"]
    e["compile_events_s"] = m["events"]
  if runs[-1].tokens is not None:
    e["new_tokens"] = runs[-1].tokens.shape[1]
    e["tokens"] = runs[-1].tokens
  return e


def run(
  model: Transformer,
  tokenizer=None,
  *,
  config: ForwardBenchConfig = ForwardBenchConfig(),
  torch_model=None,
  model_name: str = "model",
  env_extra: dict | None = None,
) -> dict[str, Any]:
  """Runs the benchmark; returns the result dict (see write). torch_model: a transformers
  causal LM with the same weights, or None to measure ps_jax alone."""
  vocab = model.config.vocab_size
  env = report.environment(**(env_extra or {}))  # load average before the runs
  prefill = prompt_ids(tokenizer, vocab, config.prefill_batch, config.prefill_tokens, config.seed)
  decode = {
    b: prompt_ids(tokenizer, vocab, b, config.decode_prompt_tokens, config.seed + 1)
    for b in config.decode_batches
  }
  runners = [PsJaxRunner(model)]
  if torch_model is not None:
    runners.append(TransformersRunner(torch_model))
  results: dict[str, Any] = {r.name: {"decode": {}} for r in runners}
  if torch_model is not None:
    import torch  # pylint: disable=import-outside-toplevel

    results["transformers"]["num_threads"] = torch.get_num_threads()

  m = _measure(runners, lambda r: r.prefill(prefill), config)
  for r in runners:
    jax_program = "_prefill" if r.name == "ps_jax" else None
    results[r.name]["prefill"] = _entry(m[r.name], *prefill.shape, jax_program)
  for b, ids in decode.items():
    n = config.decode_new_tokens
    m = _measure(runners, lambda r, ids=ids, n=n: r.decode(ids, n), config)
    for r in runners:
      jax_program = "_decode" if r.name == "ps_jax" else None
      results[r.name]["decode"][str(b)] = _entry(m[r.name], b, ids.shape[1], jax_program)

  jx = results["ps_jax"]
  jx["compile_s_total"] = jx["prefill"]["compile_s"] + sum(
    d["compile_s"] for d in jx["decode"].values()
  )
  if torch_model is not None:
    pt = results["transformers"]
    ratios = {"prefill": _ratio(jx["prefill"]["tokens_per_s"], pt["prefill"]["tokens_per_s"])}
    agreement = {}
    for b in jx["decode"]:
      ratios[f"decode_b{b}"] = _ratio(
        jx["decode"][b]["tokens_per_s"], pt["decode"][b]["tokens_per_s"]
      )
      agreement[b] = greedy_agreement(jx["decode"][b]["tokens"], pt["decode"][b]["tokens"])
    results["ratio_ps_jax_over_transformers"] = ratios
    results["greedy_agreement"] = agreement
  for name in ("ps_jax", "transformers"):
    for d in results.get(name, {}).get("decode", {}).values():
      d["tokens"] = np.asarray(d["tokens"])[:, :16]  # keep the JSON short: first 16 per row
  try:
    env["load_average_after"] = list(os.getloadavg())
  except OSError:
    pass
  return {
    "benchmark": "forward",
    "model": model_name,
    "model_config": dataclasses.asdict(model.config),
    "dtype": str(model.dtype),
    "config": dataclasses.asdict(config),
    "environment": env,
    "results": results,
  }


def greedy_agreement(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over rows of the fraction of tokens before the first difference (1.0 = identical)."""
  a, b = np.asarray(a), np.asarray(b)
  fractions = []
  for x, y in zip(a, b, strict=True):
    diff = np.nonzero(x != y)[0]
    fractions.append((diff[0] if diff.size else x.size) / x.size)
  return float(np.mean(fractions))


def _time_per_call(fn, args_fn, *, repeats: int, calls: int = 8) -> dict[str, Any]:
  """Seconds per call of a jitted fn: `repeats` samples, each `calls` back-to-back calls
  (args_fn(prev_out) gives the next args, e.g. to feed a donated cache back), synchronised."""
  import jax  # pylint: disable=import-outside-toplevel

  out = fn(*args_fn(None))  # compile + warm-up
  jax.block_until_ready(out)
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args_fn(out))
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - start) / calls)
  return report.summarize(samples)


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
    "sum": _time_per_call(jax.jit(jnp.sum), lambda _, a=big: (a,), repeats=repeats, calls=4),
    "gemv": _time_per_call(
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
      "step": _time_per_call(jax.jit(step, donate_argnums=1), step_args, repeats=repeats),
      "weight_matmuls": _time_per_call(
        jax.jit(weight_matmuls), lambda _, x=x: (params, x), repeats=repeats
      ),
      "lm_head": _time_per_call(jax.jit(lm_head), lambda _, x=x: (params, x), repeats=repeats),
    }
    fresh = KVCache.init(cfg, b, cache_len, model.dtype).replace(
      end_index=jnp.full((b,), cache_len // 2, jnp.int32)
    )
    pieces["attention"] = _time_per_call(
      jax.jit(attention), lambda _, c=fresh, q=q: (c.k, c.v, c.valid_mask(), q), repeats=repeats
    )
    kt, vt = jnp.swapaxes(fresh.k, 2, 3), jnp.swapaxes(fresh.v, 2, 3)
    pieces["attention_kv_major"] = _time_per_call(
      jax.jit(attention_kv_major),
      lambda _, c=fresh, k=kt, v=vt, q=q: (k, v, c.valid_mask(), q),
      repeats=repeats,
    )
    del kt, vt
    state["cache"] = fresh
    pieces["cache_update"] = _time_per_call(
      jax.jit(update, donate_argnums=0), update_args, repeats=repeats
    )
    out["batches"][str(b)] = {
      name: {"ms": 1e3 * s["median"], "ms_min": 1e3 * s["min"], "ms_max": 1e3 * s["max"]}
      for name, s in pieces.items()
    }
  return out


def _load(env: dict[str, Any]) -> str:
  before = (env.get("load_average_1_5_15") or [None])[0]
  after = (env.get("load_average_after") or [None])[0]
  if before is None:
    return "unknown"
  text = f"{before:.1f} before the runs"
  if after is not None:
    text += f", {after:.1f} after"
  return text + (
    " (other processes shared the cores)"
    if max(before, after or 0) > 1.5 * env.get("cpu_cores", 1)
    else ""
  )


def markdown(result: dict[str, Any], notes: str = "") -> str:
  """The markdown document for a result of `run` (table, method, then `notes`)."""
  c, env, res = result["config"], result["environment"], result["results"]
  jx, pt = res["ps_jax"], res.get("transformers")
  ratios = res.get("ratio_ps_jax_over_transformers", {})
  rows = [
    [
      f"prefill, {c['prefill_tokens']} tokens, batch {c['prefill_batch']}",
      report.fmt_spread(jx["prefill"]["tokens_per_s"]),
      report.fmt_spread(pt["prefill"]["tokens_per_s"]) if pt else "-",
      report.fmt(ratios.get("prefill"), 2),
    ]
  ]
  for b, d in jx["decode"].items():
    rows.append(
      [
        f"decode, batch {b}",
        report.fmt_spread(d["tokens_per_s"]),
        report.fmt_spread(pt["decode"][b]["tokens_per_s"]) if pt else "-",
        report.fmt(ratios.get(f"decode_b{b}"), 2),
      ]
    )
  step_rows = [
    [
      f"decode step, batch {b}",
      report.fmt(d["ms_per_step"], 2),
      report.fmt(pt["decode"][b]["ms_per_step"], 2) if pt else "-",
    ]
    for b, d in jx["decode"].items()
  ]

  def compile_row(label, d, program):
    ev = d["compile_events_s"]
    return [
      label,
      report.fmt(d["compile_s"], 2),
      report.fmt(ev.get(f"backend_compile_duration:{program}"), 2),
      report.fmt(d["first_call_overhead_s"], 2),
    ]

  compile_rows = [compile_row("prefill (`_prefill`)", jx["prefill"], "_prefill")]
  compile_rows += [
    compile_row(f"decode loop (`_decode`), batch {b}", d, "_decode")
    for b, d in jx["decode"].items()
  ]
  threads = env.get("threads", {})
  lines = [
    f"# Forward throughput: {result['model']} ({result['dtype']})",
    "",
    f"Machine: {report.device_name(env)}; 1-minute load average {_load(env)}. "
    f"Run {env['time_utc']}, jax "
    f"{env['versions'].get('jax')}, torch {env['versions'].get('torch')}, transformers "
    f"{env['versions'].get('transformers')}. Threads: "
    f"{', '.join(f'{k}: {v}' for k, v in threads.items()) or 'defaults'}.",
    "",
    f"Tokens/s, median (min-max) of {c['repeats']} runs after {c['warmup']} warm-up run(s), "
    "the frameworks' runs alternating; higher is better. Ratio = ps_jax / transformers "
    "(medians).",
    "",
    report.markdown_table(["", "ps_jax (JAX/XLA)", "transformers eager (PyTorch)", "ratio"], rows),
    "",
    report.markdown_table(["ms per step (median)", "ps_jax", "transformers"], step_rows),
    "",
    "JAX compilation, excluded above (seconds, as JAX's compile events report them: "
    "tracing + lowering + XLA compile of the program, and the XLA part alone; the first "
    "call's extra time over the median call is shown for reference, it includes the noise "
    "of one run):",
    "",
    report.markdown_table(
      ["program", "compile", "of which XLA", "first-call overhead"], compile_rows
    ),
    "",
  ]
  if res.get("greedy_agreement"):
    lines += [
      "Greedy tokens agree between the frameworks on "
      + ", ".join(f"{100 * v:.0f}% (batch {b})" for b, v in res["greedy_agreement"].items())
      + " of the decoded length (share before the first difference).",
      "",
    ]
  lines += [
    "## Method",
    "",
    f"- Prefill: one forward over {c['prefill_tokens']} prompt tokens at batch "
    f"{c['prefill_batch']} that fills a KV cache and picks the first token from the last "
    "position (ps_jax: the prefill of `generate_ids`; transformers: `model(ids, "
    "use_cache=True, logits_to_keep=1)` + argmax).",
    f"- Decode: greedy, exactly {c['decode_new_tokens']} new tokens after a "
    f"{c['decode_prompt_tokens']}-token prompt, rows of equal length (no padding). EOS is "
    "disabled: ps_jax gets the stop id -1, which no token can equal (every row is checked to "
    "run the full length); transformers gets `min_new_tokens = max_new_tokens`. ps_jax times "
    "its jitted decode loop (one step per token); transformers times `generate` from its first "
    "step to its last with a logits processor that notes the time of each step (N - 1 "
    "steps, generate's per-step overhead included).",
    "- Prompts: the same token ids for both frameworks (windows of a fixed English text).",
    "- fp32 weights in both, dequantized from the same GGUF file; transformers uses "
    '`attn_implementation="eager"` under `torch.inference_mode()`.',
    "- Regenerate: `python -m launch.bench_forward --config configs/bench_forward.py` "
    "(writes forward.json, forward.md, forward.png).",
    "",
  ]
  if result.get("decode_step_analysis"):
    per_step = {
      name: {b: d["ms_per_step"] for b, d in r["decode"].items()}
      for name, r in (("ps_jax", jx), ("transformers", pt))
      if r
    }
    lines += [analysis_markdown(result["decode_step_analysis"], per_step), ""]
  if notes:
    lines += [notes.rstrip(), ""]
  return "\n".join(lines)


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


def chart(result: dict[str, Any]) -> report.BarChart:
  res = result["results"]
  groups = [f"prefill b{result['config']['prefill_batch']}"] + [
    f"decode b{b}" for b in res["ps_jax"]["decode"]
  ]

  def values(r):
    return [r["prefill"]["tokens_per_s"]["median"]] + [
      d["tokens_per_s"]["median"] for d in r["decode"].values()
    ]

  series = {"ps_jax (JAX/XLA)": values(res["ps_jax"])}
  if "transformers" in res:
    series["transformers eager"] = values(res["transformers"])
  return report.BarChart(
    title=f"{result['model']} {result['dtype']}, {report.device_name(result['environment'])}",
    ylabel="tokens/s (median)",
    groups=groups,
    values=series,
  )


def write(result: dict[str, Any], stem: str, notes: str = "") -> dict[str, str]:
  """Writes stem.json, stem.md and stem.png for a result of `run`."""
  return report.write_report(stem, result, markdown(result, notes), chart(result))
