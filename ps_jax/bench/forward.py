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
  transformers: `generate(do_sample=False)` of N tokens minus that of 1 token (the prefill and
  first token), i.e. N - 1 steps. tok/s = batch * steps / seconds.

Both frameworks see the same token ids. JAX compile time is recorded separately: the warm-up
call's extra time over the median, and JAX's own compile-phase event durations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

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
  decode_new_tokens: int = 128
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
  return np.array([stream[i * stride:i * stride + length] for i in range(batch)], np.int32)


def _ratio(a: dict | None, b: dict | None) -> float | None:
  if not a or not b:
    return None
  return a["median"] / b["median"]


def bench_ps_jax(model: Transformer, prefill: np.ndarray, decode: dict[int, np.ndarray],
                 config: ForwardBenchConfig) -> dict[str, Any]:
  """ps_jax prefill and decode timings (see the module docstring)."""
  out: dict[str, Any] = {"decode": {}}
  n = config.decode_new_tokens

  results = []
  with report.jax_compile_events() as events:
    first = generate_ids(model, prefill.tolist(), max_new_tokens=1, stop_ids=NEVER_STOP)
  for _ in range(config.warmup - 1):
    generate_ids(model, prefill.tolist(), max_new_tokens=1, stop_ids=NEVER_STOP)
  for _ in range(config.repeats):
    results.append(generate_ids(model, prefill.tolist(), max_new_tokens=1, stop_ids=NEVER_STOP))
  seconds = report.summarize([r.prefill_s for r in results])
  out["prefill"] = {
      "batch": prefill.shape[0], "prompt_tokens": prefill.shape[1], "seconds": seconds,
      "tokens_per_s": report.rate(prefill.size, seconds),
      "first_call_s": first.prefill_s, "compile_s": first.prefill_s - seconds["median"],
      "compile_events_s": dict(events),
  }

  for b, ids in decode.items():
    with report.jax_compile_events() as events:
      first = generate_ids(model, ids.tolist(), max_new_tokens=n, stop_ids=NEVER_STOP)
    for _ in range(config.warmup - 1):
      generate_ids(model, ids.tolist(), max_new_tokens=n, stop_ids=NEVER_STOP)
    results = [generate_ids(model, ids.tolist(), max_new_tokens=n, stop_ids=NEVER_STOP)
               for _ in range(config.repeats)]
    for r in results:
      if not np.all(r.num_tokens == n):
        raise RuntimeError(f"ps_jax decode stopped early: {r.num_tokens} tokens, expected {n}")
    seconds = report.summarize([r.decode_s for r in results])
    # The decode loop feeds n tokens (the first comes from the prefill): n forward steps.
    out["decode"][str(b)] = {
        "batch": b, "prompt_tokens": ids.shape[1], "new_tokens": n, "steps": n,
        "seconds": seconds, "tokens_per_s": report.rate(b * n, seconds),
        "ms_per_step": 1e3 * seconds["median"] / n,
        "first_call_s": first.decode_s, "compile_s": first.decode_s - seconds["median"],
        "compile_events_s": dict(events),
        "tokens": results[-1].tokens,
    }
  compile_total = out["prefill"]["compile_s"] + sum(d["compile_s"] for d in out["decode"].values())
  out["compile_s_total"] = compile_total
  return out


def bench_torch(model, prefill: np.ndarray, decode: dict[int, np.ndarray],
                config: ForwardBenchConfig) -> dict[str, Any]:
  """transformers (PyTorch eager) prefill and decode timings, same protocol and prompts."""
  import torch  # pylint: disable=import-outside-toplevel

  out: dict[str, Any] = {"decode": {}, "num_threads": torch.get_num_threads()}
  n = config.decode_new_tokens
  pad = getattr(model.generation_config, "pad_token_id", None)
  pad = 0 if pad is None else pad
  with torch.inference_mode():
    ids = torch.as_tensor(prefill, dtype=torch.long)

    def run_prefill():
      logits = model(input_ids=ids, use_cache=True, logits_to_keep=1).logits
      return logits[:, -1].argmax(-1)

    warm, times = report.repeat(run_prefill, repeats=config.repeats, warmup=config.warmup)
    seconds = report.summarize(times)
    out["prefill"] = {"batch": prefill.shape[0], "prompt_tokens": prefill.shape[1],
                      "seconds": seconds, "tokens_per_s": report.rate(prefill.size, seconds),
                      "first_call_s": warm[0]}

    for b, prompt in decode.items():
      ids = torch.as_tensor(prompt, dtype=torch.long)
      mask = torch.ones_like(ids)

      def gen(k, ids=ids, mask=mask):
        return model.generate(ids, attention_mask=mask, do_sample=False, min_new_tokens=k,
                              max_new_tokens=k, pad_token_id=pad, num_beams=1,
                              temperature=None, top_p=None, top_k=None)

      _, t1 = report.repeat(lambda: gen(1), repeats=config.repeats, warmup=config.warmup)
      _, tn = report.repeat(lambda: gen(n), repeats=config.repeats, warmup=config.warmup)
      tokens = gen(n)[:, prompt.shape[1]:].numpy()
      if tokens.shape[1] != n:
        raise RuntimeError(f"transformers decode gave {tokens.shape[1]} tokens, expected {n}")
      base = report.summarize(t1)["median"]
      seconds = report.summarize([t - base for t in tn])
      out["decode"][str(b)] = {
          "batch": b, "prompt_tokens": prompt.shape[1], "new_tokens": n, "steps": n - 1,
          "seconds": seconds, "tokens_per_s": report.rate(b * (n - 1), seconds),
          "ms_per_step": 1e3 * seconds["median"] / (n - 1),
          "generate_1_token_s": report.summarize(t1), "generate_n_tokens_s": report.summarize(tn),
          "tokens": tokens,
      }
  return out


def greedy_agreement(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over rows of the fraction of tokens before the first difference (1.0 = identical)."""
  a, b = np.asarray(a), np.asarray(b)
  fractions = []
  for x, y in zip(a, b):
    diff = np.nonzero(x != y)[0]
    fractions.append((diff[0] if diff.size else x.size) / x.size)
  return float(np.mean(fractions))


def run(model: Transformer, tokenizer=None, *, config: ForwardBenchConfig = ForwardBenchConfig(),
        torch_model=None, model_name: str = "model", env_extra: dict | None = None
        ) -> dict[str, Any]:
  """Runs the benchmark; returns the result dict (see write). torch_model: a transformers
  causal LM with the same weights, or None to measure ps_jax alone."""
  vocab = model.config.vocab_size
  prefill = prompt_ids(tokenizer, vocab, config.prefill_batch, config.prefill_tokens, config.seed)
  decode = {b: prompt_ids(tokenizer, vocab, b, config.decode_prompt_tokens, config.seed + 1)
            for b in config.decode_batches}
  results = {"ps_jax": bench_ps_jax(model, prefill, decode, config)}
  if torch_model is not None:
    results["transformers"] = bench_torch(torch_model, prefill, decode, config)
    jx, pt = results["ps_jax"], results["transformers"]
    ratios = {"prefill": _ratio(jx["prefill"]["tokens_per_s"], pt["prefill"]["tokens_per_s"])}
    agreement = {}
    for b in jx["decode"]:
      ratios[f"decode_b{b}"] = _ratio(jx["decode"][b]["tokens_per_s"],
                                      pt["decode"][b]["tokens_per_s"])
      agreement[b] = greedy_agreement(jx["decode"][b]["tokens"], pt["decode"][b]["tokens"])
    results["ratio_ps_jax_over_transformers"] = ratios
    results["greedy_agreement"] = agreement
  for r in (results["ps_jax"], results.get("transformers")):
    for d in (r or {}).get("decode", {}).values():
      d["tokens"] = np.asarray(d["tokens"])[:, :16]  # keep the JSON short: first 16 per row
  return {
      "benchmark": "forward",
      "model": model_name,
      "model_config": dataclasses.asdict(model.config),
      "dtype": str(model.dtype),
      "config": dataclasses.asdict(config),
      "environment": report.environment(**(env_extra or {})),
      "results": results,
  }


def markdown(result: dict[str, Any], notes: str = "") -> str:
  """The markdown document for a result of `run` (table, method, then `notes`)."""
  c, env, res = result["config"], result["environment"], result["results"]
  jx, pt = res["ps_jax"], res.get("transformers")
  ratios = res.get("ratio_ps_jax_over_transformers", {})
  rows = [[f"prefill, {c['prefill_tokens']} tokens, batch {c['prefill_batch']}",
           report.fmt_spread(jx["prefill"]["tokens_per_s"]),
           report.fmt_spread(pt["prefill"]["tokens_per_s"]) if pt else "-",
           report.fmt(ratios.get("prefill"), 2)]]
  for b, d in jx["decode"].items():
    rows.append([f"decode, batch {b}", report.fmt_spread(d["tokens_per_s"]),
                 report.fmt_spread(pt["decode"][b]["tokens_per_s"]) if pt else "-",
                 report.fmt(ratios.get(f"decode_b{b}"), 2)])
  step_rows = [[f"decode step, batch {b}", report.fmt(d["ms_per_step"], 2),
                report.fmt(pt["decode"][b]["ms_per_step"], 2) if pt else "-"]
               for b, d in jx["decode"].items()]
  compile_rows = [["prefill", report.fmt(jx["prefill"]["compile_s"], 2),
                   report.fmt(jx["prefill"]["compile_events_s"].get("backend_compile_duration"), 2)]]
  compile_rows += [[f"decode, batch {b}", report.fmt(d["compile_s"], 2),
                    report.fmt(d["compile_events_s"].get("backend_compile_duration"), 2)]
                   for b, d in jx["decode"].items()]
  threads = env.get("threads", {})
  lines = [
      f"# Forward throughput: {result['model']} ({result['dtype']})",
      "",
      f"Machine: {report.device_name(env)}; load average at start "
      f"{env.get('load_average_1_5_15')}. Run {env['time_utc']}, jax "
      f"{env['versions'].get('jax')}, torch {env['versions'].get('torch')}, transformers "
      f"{env['versions'].get('transformers')}. Threads: {threads or 'defaults'}.",
      "",
      f"Tokens/s, median (min-max) of {c['repeats']} runs after {c['warmup']} warm-up run(s); "
      "higher is better. Ratio = ps_jax / transformers (medians).",
      "",
      report.markdown_table(["", "ps_jax (JAX/XLA)", "transformers eager (PyTorch)",
                             "ratio"], rows),
      "",
      report.markdown_table(["ms per step (median)", "ps_jax", "transformers"], step_rows),
      "",
      "JAX compilation (excluded above), seconds: first call minus the median call, and "
      "XLA backend compile time reported by JAX:",
      "",
      report.markdown_table(["program", "first-call overhead", "XLA backend compile"],
                            compile_rows),
      "",
  ]
  if res.get("greedy_agreement"):
    lines += ["Greedy tokens agree between the frameworks on "
              + ", ".join(f"{100 * v:.0f}% (batch {b})" for b, v in res["greedy_agreement"].items())
              + " of the decoded length (share before the first difference).", ""]
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
      "its jitted decode loop (one step per token); transformers times `generate` of N tokens "
      "minus `generate` of 1 token (N - 1 steps, generate's per-step overhead included).",
      "- Prompts: the same token ids for both frameworks (windows of a fixed English text).",
      "- fp32 weights in both, dequantized from the same GGUF file; transformers uses "
      "`attn_implementation=\"eager\"` under `torch.inference_mode()`.",
      "- Regenerate: `python -m launch.bench_forward` (writes forward.json, forward.md, "
      "forward.png).",
      "",
  ]
  if notes:
    lines += [notes.rstrip(), ""]
  return "\n".join(lines)


def chart(result: dict[str, Any]) -> report.BarChart:
  res = result["results"]
  groups = [f"prefill b{result['config']['prefill_batch']}"] + [
      f"decode b{b}" for b in res["ps_jax"]["decode"]]

  def values(r):
    return [r["prefill"]["tokens_per_s"]["median"]] + [
        d["tokens_per_s"]["median"] for d in r["decode"].values()]

  series = {"ps_jax (JAX/XLA)": values(res["ps_jax"])}
  if "transformers" in res:
    series["transformers eager"] = values(res["transformers"])
  return report.BarChart(
      title=f"{result['model']} {result['dtype']}, {report.device_name(result['environment'])}",
      ylabel="tokens/s (median)", groups=groups, values=series)


def write(result: dict[str, Any], stem: str, notes: str = "") -> dict[str, str]:
  """Writes stem.json, stem.md and stem.png for a result of `run`."""
  return report.write_report(stem, result, markdown(result, notes), chart(result))
