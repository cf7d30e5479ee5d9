r"""Generates an answer to one prompt and reports prefill and decode throughput.

  python -m launch.generate --config configs/generate.py \
      --config.prompt="What is the capital of France?"

Prints the answer, then `prefill: ... tok/s` (prompt tokens / prefill time, first token
included) and `decode: ... tok/s` (generated tokens / decode time), both device-synchronised
and, with the default `config.warmup=True`, measured after a warm-up run so that XLA
compilation is excluded. Reads nothing from stdin.
"""

from __future__ import annotations

import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/generate.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  import jax  # pylint: disable=import-outside-toplevel

  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax import generation  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  c = _CONFIG.value
  start = time.perf_counter()
  model, tokenizer = ps.load(c.model, dtype=dtype(c.dtype))
  load_s = time.perf_counter() - start
  logging.info("loaded %s (%s) in %.2f s", c.model, c.dtype, load_s)
  print(f"load: {c.model} ({c.dtype}) in {load_s:.2f} s", flush=True)
  if tokenizer is None:
    raise app.UsageError(f"{c.model} has no tokenizer; launch.generate needs one")

  prompts = generation.encode_prompts(tokenizer, [c.prompt], chat=c.chat)
  stops = generation.stop_ids_for(model, tokenizer)
  kwargs = dict(
    max_new_tokens=c.max_new_tokens,
    stop_ids=stops,
    sampling=generation.SamplingConfig(c.temperature, c.top_p, c.top_k),
    rng=jax.random.key(c.seed),
  )
  if c.warmup:
    first = generation.generate_ids(model, prompts, **kwargs)
  result = generation.generate_ids(model, prompts, **kwargs)
  if c.warmup:
    logging.info(
      "warm-up run (compilation included): prefill %.2f s, decode %.2f s; compilation ~ %.2f s",
      first.prefill_s,
      first.decode_s,
      first.prefill_s + first.decode_s - result.prefill_s - result.decode_s,
    )
  answer = generation.decode_texts(tokenizer, result, stops)[0]

  prompt_tokens = int(result.prompt_lengths[0])
  new_tokens = int(result.num_tokens[0])
  note = "" if c.warmup else " (first run: XLA compilation included)"
  print(f"prompt: {c.prompt}")
  print(f"answer: {answer}")
  print(
    f"prefill: {prompt_tokens} tokens in {result.prefill_s:.3f} s = "
    f"{prompt_tokens / result.prefill_s:.1f} tok/s{note}"
  )
  print(
    f"decode: {new_tokens} tokens in {result.decode_s:.3f} s = "
    f"{new_tokens / result.decode_s:.1f} tok/s{note}",
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
