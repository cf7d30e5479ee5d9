"""Batched generation: a jitted chunked prefill, then decoding in one jitted `lax.while_loop`.

Prompts are right-padded to a length bucket (multiples of the prefill chunk above it) and
prefilled chunk by chunk into a preallocated cache (`Transformer.prefill`); each row's cache
advances only by its real tokens and its positions continue from its own length, so padding
never changes a result.
Every sampled token, the last included, is fed back once, so the returned cache holds the
KV of all generated tokens (the workers rely on this).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache import KVCache, PrefixKV
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig, Transformer
from ps_jax.timing import timed_call
from ps_jax.typing import Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Validated on construction, so every public entry point rejects bad values the same way."""

  temperature: float = 0.0  # 0 = greedy
  top_p: float = 1.0
  top_k: int = 0  # 0 = off

  def __post_init__(self):
    t, p = self.temperature, self.top_p
    if not _is_number(t) or not 0.0 <= t < float("inf"):
      raise ValueError(
        f"temperature={t!r} is outside the allowed range: a finite number >= 0 (0 = greedy)"
      )
    if not _is_number(p) or not 0.0 < p <= 1.0:
      raise ValueError(f"top_p={p!r} is outside the allowed range (0, 1] (1 = off)")
    check_count("top_k", self.top_k, minimum=0, note=" (0 = off)")


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_count(name: str, value, *, minimum: int = 1, note: str = "") -> None:
  """Raises a ValueError naming `name` unless value is an integer >= minimum."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(
      f"{name}={value!r} is outside the allowed range: an integer >= {minimum}{note}"
    )


def require_tokenizer(tokenizer, *, caller: str, why: str) -> None:
  """Raises a ValueError naming the `tokenizer` argument when it is None but text is needed."""
  if tokenizer is None:
    raise ValueError(
      f"{caller}: tokenizer=None, but {why}; pass the model's tokenizer "
      "(ps.load returns None for a source that has none)"
    )


def sample(logits: Array, rng: Array, sampling: SamplingConfig) -> Array:
  """Next tokens [B] from fp32 logits [B, V]."""
  if sampling.temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k > 0:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
    cutoff_index = (
      jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < sampling.top_p, axis=-1, keepdims=True)
      - 1
    )
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class DecodeState:
  """What decoding needs after a prefill; one row per sequence."""

  next_token: Array  # [B] int32, sampled but not yet fed
  next_position: Array  # [B] int32, RoPE position of next_token
  cache: KVCache
  rng: Array


@dataclasses.dataclass
class GenerationResult:
  tokens: np.ndarray  # [B, max_new_tokens] generated ids (pad after a row stops)
  num_tokens: np.ndarray  # [B] generated tokens per row, the stop token included
  cache: KVCache  # prompt + generated KV of every row
  prompt_lengths: np.ndarray  # [B]
  prefill_s: float  # prefill + first token, device-synchronised
  decode_s: float


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "cache_len", "sampling", "lora_scale", "num_samples", "prefill"),
)
def _prefill(
  graphdef,
  params,
  tokens,
  lengths,
  offsets,
  rng,
  prefix,
  lora,
  *,
  cache_len,
  sampling,
  lora_scale,
  num_samples,
  prefill: PrefillConfig = DEFAULT_PREFILL,
):
  """Prefills each prompt once, then fans out num_samples rows per prompt (b -> b*n + j)."""
  model = nnx.merge(graphdef, params)
  b, t = tokens.shape
  cache = KVCache.init(model.config, b, cache_len, model.dtype)
  positions = offsets[:, None] + jnp.arange(t)[None, :]
  hidden, cache = model.prefill(
    tokens,
    positions,
    cache,
    lengths=lengths,
    prefix=prefix,
    lora=lora,
    lora_scale=lora_scale,
    config=prefill,
  )
  last = hidden[jnp.arange(b), lengths - 1]  # [B, D]
  logits = jnp.repeat(model.logits(last), num_samples, axis=0)  # [B*n, V]
  rng, key = jax.random.split(rng)
  first = sample(logits, key, sampling)
  next_position = jnp.repeat(offsets + lengths, num_samples)
  return DecodeState(first, next_position, cache.repeat(num_samples), rng)


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "max_new_tokens", "sampling", "lora_scale"),
  donate_argnames=("cache",),
)
def _decode(
  graphdef, params, cache, state, stop_ids, prefix, lora, *, max_new_tokens, sampling, lora_scale
):
  model = nnx.merge(graphdef, params)
  state = state.replace(cache=cache)
  b = state.next_token.shape[0]
  pad = stop_ids[0]

  def cond(carry):
    step, _, done, _, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, s, done, out, num = carry
    tok = jnp.where(done, pad, s.next_token)
    out = out.at[:, step].set(tok)
    active = (~done).astype(jnp.int32)
    hidden, cache = model.hidden_states(
      tok[:, None],
      s.next_position[:, None],
      s.cache,
      lengths=active,
      prefix=prefix,
      lora=lora,
      lora_scale=lora_scale,
    )
    rng, key = jax.random.split(s.rng)
    nxt = sample(model.logits(hidden[:, 0]), key, sampling)
    done = done | jnp.isin(tok, stop_ids)
    return step + 1, DecodeState(nxt, s.next_position + active, cache, rng), done, out, num + active

  carry = (
    jnp.int32(0),
    state,
    jnp.zeros((b,), bool),
    jnp.full((b, max_new_tokens), pad, jnp.int32),
    jnp.zeros((b,), jnp.int32),
  )
  _, state, _, out, num = jax.lax.while_loop(cond, body, carry)
  return out, num, state.cache


def generate_ids(
  model: Transformer,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  stop_ids: Sequence[int],
  sampling: SamplingConfig = SamplingConfig(),
  rng: Array | None = None,
  prefix: PrefixKV | None = None,
  position_offsets: Sequence[int] | None = None,
  lora=None,
  lora_scale: float = 0.0,
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
  max_prompt_tokens: int | None = None,
  num_samples: int = 1,
  prefill: PrefillConfig = DEFAULT_PREFILL,
) -> GenerationResult:
  """Generates up to max_new_tokens after each prompt (token ids); see GenerationResult.

  With num_samples > 1 each prompt is prefilled once and decoded num_samples times (rows
  b * num_samples + j). `prefill_s` (prefill + first token) excludes compilation. `prefill`
  sets the chunk, the key block and the attention backend of the prompt's prefill.
  """
  if not prompts:
    raise ValueError("prompts is empty")
  if prefix is not None and num_samples != 1:
    raise ValueError("num_samples > 1 with a prefix is not supported")
  if not stop_ids:
    raise ValueError("stop_ids is empty: give at least one EOS id (it also pads outputs)")
  check_count("max_new_tokens", max_new_tokens)
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min() == 0:
    raise ValueError(f"prompt {int(lengths.argmin())} is empty")
  for i, p in enumerate(prompts):
    check_token_ids(p, model.config.vocab_size, what=f"prompt {i}")
  offsets = (
    np.zeros(len(prompts), np.int32)
    if position_offsets is None
    else np.asarray(position_offsets, np.int32)
  )
  limit = model.config.max_position_embeddings
  longest = int((lengths + offsets).max())
  if max_prompt_tokens is not None and lengths.max() > max_prompt_tokens:
    raise ValueError(
      f"prompt {int(lengths.argmax())} has {int(lengths.max())} tokens, above "
      f"max_prompt_tokens={max_prompt_tokens}"
    )
  if longest + max_new_tokens > limit:
    raise ValueError(
      f"prompt of {longest} positions + max_new_tokens={max_new_tokens} exceeds "
      f"the model's max_position_embeddings={limit}"
    )
  t = bucket(int(lengths.max()), length_buckets, what="prompt length")
  tokens = np.zeros((len(prompts), t), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, : len(p)] = p
  rng = jax.random.key(0) if rng is None else rng
  graphdef, params = nnx.split(model)
  statics = dict(sampling=sampling, lora_scale=float(lora_scale))

  state, prefill_s = timed_call(
    _prefill,
    graphdef,
    params,
    jnp.asarray(tokens),
    jnp.asarray(lengths),
    jnp.asarray(offsets),
    rng,
    prefix,
    lora,
    cache_len=t + max_new_tokens,
    num_samples=num_samples,
    prefill=prefill,
    **statics,
  )
  start = time.perf_counter()
  out, num, cache = _decode(
    graphdef,
    params,
    state.cache,
    state.replace(cache=None),
    jnp.asarray(stop_ids, jnp.int32),
    prefix,
    lora,
    max_new_tokens=max_new_tokens,
    **statics,
  )
  out, num = jax.device_get((out, num))
  decode_s = time.perf_counter() - start
  return GenerationResult(
    np.asarray(out), np.asarray(num), cache, np.repeat(lengths, num_samples), prefill_s, decode_s
  )


def check_token_ids(ids, vocab_size: int, *, what: str) -> None:
  """Raises if any id lies outside [0, vocab_size) (e.g. a tokenizer of another model)."""
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
    raise ValueError(
      f"{what} has token id {bad} outside the model's vocabulary [0, vocab_size={vocab_size})"
    )


def encode_prompts(tokenizer, prompts, *, chat: bool = True) -> list[list[int]]:
  """Token ids for each prompt: a string (wrapped as one user turn when the tokenizer has a
  chat template and chat=True), a list of chat messages, or already a list of ids."""
  out = []
  for p in prompts:
    if isinstance(p, str):
      if chat and getattr(tokenizer, "chat_template", None):
        p = [{"role": "user", "content": p}]
      else:
        out.append(list(tokenizer.encode(p, add_special_tokens=False)))
        continue
    if p and isinstance(p[0], dict):
      ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
      out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    else:
      out.append([int(x) for x in p])
  return out


def stop_ids_for(model: Transformer, tokenizer) -> list[int]:
  ids = list(model.config.eos_token_ids)
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.insert(0, int(tokenizer.eos_token_id))
  return list(dict.fromkeys(ids))


def decode_texts(tokenizer, result: GenerationResult, stop_ids: Sequence[int]) -> list[str]:
  texts = []
  for row, n in zip(result.tokens, result.num_tokens, strict=True):
    ids = [int(x) for x in row[:n] if int(x) not in stop_ids]
    texts.append(tokenizer.decode(ids, skip_special_tokens=True))
  return texts


def generate(
  model: Transformer,
  tokenizer,
  prompts,
  max_new_tokens: int = 256,
  *,
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  chat: bool = True,
) -> list[str]:
  """Texts generated for each prompt (see encode_prompts for the accepted prompt forms)."""
  sampling = SamplingConfig(temperature, top_p, top_k)
  check_count("max_new_tokens", max_new_tokens)
  require_tokenizer(
    tokenizer,
    caller="generate",
    why="it returns texts (for token ids in and out use generation.generate_ids)",
  )
  ids = encode_prompts(tokenizer, prompts, chat=chat)
  stops = stop_ids_for(model, tokenizer)
  result = generate_ids(
    model,
    ids,
    max_new_tokens=max_new_tokens,
    stop_ids=stops,
    sampling=sampling,
    rng=jax.random.key(seed),
  )
  return decode_texts(tokenizer, result, stops)
