"""Forward-pass throughput: prefill and decode tokens/s of ps_jax, beside transformers eager.

What is measured (device-synchronised, compilation excluded by warm-up calls, the two
frameworks interleaved round by round under `timing.measure`; medians with min/max spreads and
the spread of the per-round ratios):

* prefill, for each length in `prefill_tokens` (batch `prefill_batch`): one forward over the
  prompt that fills a KV cache and picks the first token from the last position's logits.
  ps_jax: the jitted prefill `generation.generate_ids` runs (`generation._prefill`, the
  prompt at its exact length). transformers: `model(ids, use_cache=True, logits_to_keep=1)`
  plus the argmax. tok/s = batch * prompt tokens / seconds.
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
import math
import os
import time
from typing import Any

import numpy as np

from ps_jax.bench import report, timing
from ps_jax.bench.paths import PrefillProgram
from ps_jax.bench.timing import Path, Sample
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
  prefill_tokens: tuple[int, ...] = (512, 2048, 8192)
  prefill_batch: int = 1
  decode_prompt_tokens: int = 128
  decode_new_tokens: int = 64
  decode_batches: tuple[int, ...] = (1, 8)
  repeats: int = 5
  min_repeats: int = 3  # slow calls (long prompts) get fewer repeats, never fewer than this
  path_budget_s: float = math.inf  # timed seconds per framework and row before that applies
  warmup: int = 1
  seed: int = 0  # random prompt ids when there is no tokenizer

  def __post_init__(self):
    for name in ("prefill_batch", "decode_prompt_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
    if not self.prefill_tokens or min(self.prefill_tokens) < 1:
      raise ValueError(f"prefill_tokens={self.prefill_tokens}: need prompt lengths >= 1")
    if self.decode_new_tokens < 2:
      raise ValueError(f"decode_new_tokens={self.decode_new_tokens}: must be >= 2")
    if not self.decode_batches or min(self.decode_batches) < 1:
      raise ValueError(f"decode_batches={self.decode_batches}: need batch sizes >= 1")
    self.protocol  # validates repeats, min_repeats, warmup  # noqa: B018

  @property
  def protocol(self) -> timing.Protocol:
    return timing.Protocol(
      self.repeats, min(self.min_repeats, self.repeats), self.warmup, self.path_budget_s, False
    )


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


class PsJaxRunner:
  """ps_jax's side: the jitted prefill and the decode loop of `generation.generate_ids`."""

  name = "ps_jax"

  def __init__(self, model: Transformer):
    self.model = model

  def prefill(self, ids: np.ndarray) -> Path:
    return Path(PrefillProgram(self.model, ids.tolist()).sample)

  def decode(self, ids: np.ndarray, n: int) -> Path:
    def once():
      r = generate_ids(self.model, ids.tolist(), max_new_tokens=n, stop_ids=NEVER_STOP)
      if not np.all(r.num_tokens == n):
        raise RuntimeError(f"ps_jax decode stopped early: {r.num_tokens} tokens, expected {n}")
      # The loop feeds all n tokens (the first comes from the prefill): n forward steps.
      return Sample(r.decode_s, output={"steps": n, "tokens": np.asarray(r.tokens)})

    return Path(once)


class TransformersRunner:
  """transformers' side: a cached forward for prefill, `generate` for decode (module doc)."""

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
    self.device = next(model.parameters()).device
    pad = getattr(model.generation_config, "pad_token_id", None)
    self.pad = 0 if pad is None else pad

  def prefill(self, ids: np.ndarray) -> Path:
    x = self.torch.as_tensor(ids, dtype=self.torch.long, device=self.device)

    def once():
      with self.torch.inference_mode():
        start = time.perf_counter()
        logits = self.model(input_ids=x, use_cache=True, logits_to_keep=1).logits
        logits[:, -1].argmax(-1).cpu()  # the copy synchronises the device
        return Sample(time.perf_counter() - start)

    return Path(once)

  def decode(self, ids: np.ndarray, n: int) -> Path:
    from transformers import LogitsProcessorList  # pylint: disable=import-outside-toplevel

    x = self.torch.as_tensor(ids, dtype=self.torch.long, device=self.device)

    def once():
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
      tokens = out[:, ids.shape[1] :].cpu().numpy()
      return Sample(clock.times[-1] - clock.times[0], output={"steps": n - 1, "tokens": tokens})

    return Path(once)


def _entry(m: dict[str, Any], batch: int, prompt_tokens: int, jax_program: str | None):
  seconds = m["seconds"]
  last = m["outputs"][-1] if isinstance(m["outputs"][-1], dict) else {}
  steps = last.get("steps", 1)
  amount = batch * (steps if "tokens" in last else prompt_tokens)
  e = {
    "batch": batch,
    "prompt_tokens": prompt_tokens,
    "steps": steps,
    "seconds": seconds,
    "repeats": m["repeats"],
    "tokens_per_s": timing.rate(amount, seconds),
    "ms_per_step": 1e3 * seconds["median"] / steps,
    "first_call_s": m["warmup_s"][0],
  }
  if jax_program is not None:
    # Tracing + lowering + XLA compile of this program, as JAX reports them.
    e["compile_s"] = timing.compile_seconds(m["compile_events_s"], jax_program)
    e["first_call_overhead_s"] = m["warmup_s"][0] - seconds["median"]
    e["compile_events_s"] = m["compile_events_s"]
  if "tokens" in last:
    e["new_tokens"] = last["tokens"].shape[1]
    e["tokens"] = last["tokens"]
  return e


def _speed_ratio(jx: dict[str, Any], pt: dict[str, Any]) -> dict[str, Any]:
  """ps_jax tok/s over transformers': of the medians, and per round (same round's calls)."""
  rounds = timing.round_ratios(pt["seconds"], jx["seconds"])
  ratio = jx["tokens_per_s"]["median"] / pt["tokens_per_s"]["median"]
  return {"median": ratio, "round_min": min(rounds), "round_max": max(rounds), "rounds": rounds}


def run(
  model: Transformer,
  tokenizer=None,
  *,
  config: ForwardBenchConfig = ForwardBenchConfig(),
  torch_model=None,
  model_name: str = "model",
  env_extra: dict | None = None,
  log=None,
) -> dict[str, Any]:
  """Runs the benchmark; returns the result dict (see forward_report.write). torch_model: a
  transformers causal LM with the same weights, or None to measure ps_jax alone."""
  vocab = model.config.vocab_size
  env = report.environment(**(env_extra or {}))  # load average before the runs
  runners = [PsJaxRunner(model)]
  if torch_model is not None:
    runners.append(TransformersRunner(torch_model))
  results: dict[str, Any] = {r.name: {"prefill": {}, "decode": {}} for r in runners}
  if torch_model is not None:
    import torch  # pylint: disable=import-outside-toplevel

    results["transformers"]["num_threads"] = torch.get_num_threads()
    env["torch_attn_implementation"] = getattr(torch_model.config, "_attn_implementation", None)

  def measure(kind: str, key: str, ids: np.ndarray, *extra) -> None:
    paths = {r.name: getattr(r, kind)(ids, *extra) for r in runners}
    if log is not None:
      log(f"{kind} {key} ({ids.shape[0]} x {ids.shape[1]} tokens)")
    m = timing.measure(paths, config.protocol, log=log)
    program = "_prefill" if kind == "prefill" else "_decode"
    for r in runners:
      jax_program = program if r.name == "ps_jax" else None
      results[r.name][kind][key] = _entry(m[r.name], *ids.shape, jax_program)

  for t in config.prefill_tokens:
    measure("prefill", str(t), prompt_ids(tokenizer, vocab, config.prefill_batch, t, config.seed))
  for b in config.decode_batches:
    ids = prompt_ids(tokenizer, vocab, b, config.decode_prompt_tokens, config.seed + 1)
    measure("decode", str(b), ids, config.decode_new_tokens)

  jx = results["ps_jax"]
  jx["compile_s_total"] = sum(e["compile_s"] for k in ("prefill", "decode") for e in jx[k].values())
  if torch_model is not None:
    pt = results["transformers"]
    ratios = {f"prefill_{t}": _speed_ratio(e, pt["prefill"][t]) for t, e in jx["prefill"].items()}
    for b, e in jx["decode"].items():
      ratios[f"decode_b{b}"] = _speed_ratio(e, pt["decode"][b])
    results["ratio_ps_jax_over_transformers"] = ratios
    results["greedy_agreement"] = {
      b: greedy_agreement(e["tokens"], pt["decode"][b]["tokens"]) for b, e in jx["decode"].items()
    }
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
