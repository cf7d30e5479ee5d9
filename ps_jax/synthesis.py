"""Synthesis over worker branches: the text methods (paste the branch texts into the prompt) or
the cache methods (read the branches' KV caches).

Cache methods share one forward: re-encode every branch to [0, L_i) -> (mapper) -> merge in
branch order -> the synthesizer's tokens at positions Lmax, Lmax+1, ... attend to all valid
branch slots and causally to themselves, through the (optional) LoRA. Text methods run the
base model on the text-synthesizer prompt, with the (optional) LoRA.

    method               reads  mapper  LoRA  re-encode
    text                 text     -      -              (zero-shot text synthesis)
    text_lora            text     -      x              (the trained text baseline)
    pcw                  cache    -      -       x      (training-free Parallel Context Windows)
    mapper_only          cache    x      -       x
    lora_only            cache    -      x       x
    parallel_synthesis   cache    x      x       x
    no_reencode          cache    x      x       -      (keys keep their worker positions)

no_reencode skips only the rotation: the keys keep the positions they were computed at
(a worker's output sits after its prompt, [P_i, P_i + L_i)) and the synthesizer still starts at
Lmax. Fixed-text branches (encode_branches, training) start at position 0, where re-encoding
is the identity: there no_reencode equals parallel_synthesis; it differs on branches that sit
after a prompt (workers, encode_branches(prefixes=...)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.adapter import Adapter
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS
from ps_jax.cache import PrefixKV
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.generation import (
  SamplingConfig,
  check_count,
  check_token_ids,
  decode_texts,
  encode_prompts,
  generate_ids,
  require_tokenizer,
  stop_ids_for,
)
from ps_jax.model import DEFAULT_PREFILL, ModelConfig, PrefillConfig, Transformer
from ps_jax.model.rope import inverse_frequencies
from ps_jax.prompts import PromptTemplates
from ps_jax.timing import timed_call
from ps_jax.typing import Array


@dataclasses.dataclass(frozen=True)
class Method:
  """How a synthesis method reads the branches and which parts of an adapter it uses."""

  reads: str  # "text": branch texts in the prompt; "cache": the branches' KV caches
  mapper: bool
  lora: bool
  reencode: bool = True  # cache methods: rotate branch keys to [0, L_i)

  @property
  def trainable(self) -> bool:
    return self.mapper or self.lora


METHOD_TABLE = {
  "text": Method("text", mapper=False, lora=False),
  "text_lora": Method("text", mapper=False, lora=True),
  "pcw": Method("cache", mapper=False, lora=False),
  "mapper_only": Method("cache", mapper=True, lora=False),
  "lora_only": Method("cache", mapper=False, lora=True),
  "parallel_synthesis": Method("cache", mapper=True, lora=True),
  "no_reencode": Method("cache", mapper=True, lora=True, reencode=False),
}
METHODS = tuple(METHOD_TABLE)
# method -> (uses mapper, uses LoRA), the cache methods only
CACHE_METHODS = {m: (s.mapper, s.lora) for m, s in METHOD_TABLE.items() if s.reads == "cache"}
TEXT_METHODS = tuple(m for m, s in METHOD_TABLE.items() if s.reads == "text")
TRAINABLE_METHODS = tuple(m for m, s in METHOD_TABLE.items() if s.trainable)


@dataclasses.dataclass
class SynthesisResult:
  method: str
  texts: list[str]
  ttft_s: float  # time to first token of the batch, device-synchronised, compile excluded
  prompt_tokens: np.ndarray  # [B] synthesizer prompt tokens (text: includes the branch texts)
  generated_tokens: np.ndarray  # [B]


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method={method!r}; expected one of {METHODS}")


def adapter_parts(adapter: Adapter | None, method: str, model: Transformer):
  """(mapper or None, LoRA weights in the model's dtype or None, LoRA scale): the parts of
  `adapter` that `method` uses (see the module's table).

  `text_lora` needs an adapter with a LoRA (without one it would silently be `text`); the
  other methods take a missing part as the identity.
  """
  spec = METHOD_TABLE[method]
  if method == "text_lora" and (adapter is None or adapter.lora is None):
    raise ValueError(
      "method='text_lora' decodes the text prompt with a trained LoRA: pass adapter=... "
      "with a LoRA (e.g. one trained with train.method='text_lora'); zero-shot is method='text'"
    )
  if adapter is None:
    return None, None, 0.0
  adapter.check_compatible(model.config)
  mapper = adapter.mapper if spec.mapper else None
  if spec.lora and adapter.lora is not None:
    return mapper, adapter.lora.weights(model.dtype), adapter.lora.scale
  return mapper, None, 0.0


def check_caches(model: Transformer, caches: BranchCaches) -> None:
  if caches.model_fingerprint != model.config.fingerprint:
    raise ValueError(
      "branch caches come from a different model: "
      f"{caches.model_fingerprint!r} != {model.config.fingerprint!r}"
    )


def build_prefix(
  config: ModelConfig, caches: BranchCaches, mapper=None, reencode: bool = True
) -> tuple[PrefixKV, Array]:
  """(merged read-only KV, Lmax [B]): re-encode -> map -> merge. Pure; used under jit.
  reencode=False (the no_reencode ablation) skips the rotation: keys keep their positions."""
  if reencode:
    caches = caches.reencoded(inverse_frequencies(config))
  if mapper is not None:
    caches = mapper(caches)
  return caches.merged(), caches.max_length()


def synthesis_hidden(
  model: Transformer,
  caches: BranchCaches,
  tokens: Array,
  lengths: Array | None = None,
  *,
  mapper=None,
  lora=None,
  lora_scale: float = 0.0,
  reencode: bool = True,
) -> Array:
  """Final hidden states [B, T, D] of synthesizer tokens [B, T] placed at Lmax + t over the
  branches: the one forward of all cache methods (generation, training and tests)."""
  prefix, lmax = build_prefix(model.config, caches, mapper, reencode)
  positions = lmax[:, None] + jnp.arange(tokens.shape[1])[None, :]
  hidden, _ = model.hidden_states(
    tokens, positions, None, lengths=lengths, prefix=prefix, lora=lora, lora_scale=lora_scale
  )
  return hidden


def synthesis_forward(
  model: Transformer, caches: BranchCaches, tokens: Array, lengths: Array | None = None, **kwargs
) -> Array:
  """Logits [B, T, V] of `synthesis_hidden`."""
  return model.logits(synthesis_hidden(model, caches, tokens, lengths, **kwargs))


@functools.partial(
  jax.jit, static_argnames=("graphdef", "mapper_graphdef", "lora_scale", "reencode")
)
def _synthesis_logits(
  graphdef,
  params,
  mapper_graphdef,
  mapper_params,
  lora,
  caches,
  tokens,
  lengths,
  *,
  lora_scale,
  reencode=True,
):
  model = nnx.merge(graphdef, params)
  mapper = None if mapper_graphdef is None else nnx.merge(mapper_graphdef, mapper_params)
  return synthesis_forward(
    model,
    caches,
    tokens,
    lengths,
    mapper=mapper,
    lora=lora,
    lora_scale=lora_scale,
    reencode=reencode,
  )


def _split_optional(module):
  return (None, None) if module is None else nnx.split(module)


def synthesis_logits(
  model: Transformer,
  branches: Branches | BranchCaches,
  synth_tokens,
  method: str = "parallel_synthesis",
  adapter: Adapter | None = None,
  lengths=None,
) -> Array:
  """Logits [B, T, V] for synth_tokens [B, T] (no template added); cache methods only."""
  _check_method(method)
  if METHOD_TABLE[method].reads == "text":
    raise ValueError(
      f"synthesis_logits serves the cache methods; for `{method}` run the model on "
      "the concatenated prompt"
    )
  caches = branches.caches if isinstance(branches, Branches) else branches
  check_caches(model, caches)
  tokens = np.asarray(synth_tokens)
  num_examples = caches.lengths.shape[0]
  if tokens.ndim != 2 or tokens.shape[0] != num_examples:
    raise ValueError(
      f"synth_tokens has shape {tokens.shape}; expected [B, T] with "
      f"B={num_examples}, the number of examples of the branches"
    )
  if lengths is not None and np.shape(lengths) != (num_examples,):
    raise ValueError(f"lengths has shape {np.shape(lengths)}; expected ({num_examples},)")
  check_token_ids(tokens, model.config.vocab_size, what="synth_tokens")
  mapper, lora, scale = adapter_parts(adapter, method, model)
  graphdef, params = nnx.split(model)
  mapper_graphdef, mapper_params = _split_optional(mapper)
  tokens = jnp.asarray(tokens, jnp.int32)
  return _synthesis_logits(
    graphdef,
    params,
    mapper_graphdef,
    mapper_params,
    lora,
    caches,
    tokens,
    None if lengths is None else jnp.asarray(lengths, jnp.int32),
    lora_scale=float(scale),
    reencode=METHOD_TABLE[method].reencode,
  )


@functools.partial(jax.jit, static_argnames=("config", "mapper_graphdef", "reencode"))
def _build_prefix(config, mapper_graphdef, mapper_params, caches, reencode=True):
  mapper = None if mapper_graphdef is None else nnx.merge(mapper_graphdef, mapper_params)
  return build_prefix(config, caches, mapper, reencode)


@dataclasses.dataclass(frozen=True)
class PrefixBuilder:
  """The cache methods' latent prefix as one jitted program: `build_prefix` (re-encode ->
  mapper -> merge of the branch caches) under jit, what `synthesize`, the agents' judger and
  the TTFT benchmark run before the synthesizer's prefill.

  The mapper is split once here; every call passes the same arguments the same way, so a
  workload compiles one program per branch shape (bucket), never one per call.
  """

  config: ModelConfig
  mapper_graphdef: nnx.GraphDef | None = None
  mapper_params: nnx.State | None = None
  reencode: bool = True

  # The jitted function itself: what `timed_call`, `_cache_size()` and XLA's memory analysis
  # take, with `args(caches)`.
  program = staticmethod(_build_prefix)

  @classmethod
  def create(cls, config: ModelConfig, mapper=None, reencode: bool = True) -> PrefixBuilder:
    """The builder for `config`'s model with `mapper` (None: no mapper); reencode=False is the
    no_reencode ablation (keys keep their positions)."""
    return cls(config, *_split_optional(mapper), reencode=reencode)

  def args(self, caches: BranchCaches) -> tuple:
    """`program`'s arguments for `caches` (all positional, as every call passes them)."""
    return (self.config, self.mapper_graphdef, self.mapper_params, caches, self.reencode)

  def __call__(self, caches: BranchCaches) -> tuple[PrefixKV, Array]:
    """(merged read-only KV, Lmax [B]) of `caches`, asynchronously dispatched."""
    return self.program(*self.args(caches))

  def timed(self, caches: BranchCaches) -> tuple[tuple[PrefixKV, Array], float]:
    """((prefix, Lmax), seconds): device-synchronised, compilation excluded (`timed_call`)."""
    return timed_call(self.program, *self.args(caches))


def synthesize(
  model: Transformer,
  tokenizer,
  branches: Branches,
  questions: Sequence[str],
  method: str = "parallel_synthesis",
  adapter: Adapter | None = None,
  max_new_tokens: int = 256,
  *,
  templates: PromptTemplates = PromptTemplates(),
  length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
  prefill: PrefillConfig = DEFAULT_PREFILL,
) -> SynthesisResult:
  """The synthesizer's greedy answer to each question given its example's branches.

  `adapter` serves the methods that use one (see the module's table); `text` and `pcw` ignore
  it, `text_lora` requires one with a LoRA. Every method prefills its synthesizer prompt with
  the chunked `Transformer.prefill` (`prefill`: chunk, key block, attention backend); the
  cache methods read the merged branch caches there as a prefix, without copying them.
  """
  _check_method(method)
  check_count("max_new_tokens", max_new_tokens)
  if len(questions) != branches.batch_size:
    raise ValueError(f"{len(questions)} questions for {branches.batch_size} examples of branches")
  spec = METHOD_TABLE[method]
  if spec.reads == "cache":
    check_caches(model, branches.caches)
  require_tokenizer(
    tokenizer,
    caller="synthesize",
    why="the questions are text in the synthesizer's chat template and the "
    "answers are decoded to text",
  )
  stops = stop_ids_for(model, tokenizer)
  common = dict(
    max_new_tokens=max_new_tokens,
    stop_ids=stops,
    sampling=SamplingConfig(),
    length_buckets=length_buckets,
    prefill=prefill,
  )
  if spec.reads == "text":
    _, lora, scale = adapter_parts(adapter, method, model)  # text_lora: LoRA
    prompts = [
      templates.text_synthesizer_messages(q, t)
      for q, t in zip(questions, branches.texts, strict=True)
    ]
    ids = encode_prompts(tokenizer, prompts)
    result = generate_ids(model, ids, lora=lora, lora_scale=scale, **common)
    ttft = result.prefill_s
  else:
    mapper, lora, scale = adapter_parts(adapter, method, model)
    builder = PrefixBuilder.create(model.config, mapper, spec.reencode)
    (prefix, lmax), prefix_s = builder.timed(branches.caches)
    ids = encode_prompts(tokenizer, [templates.latent_synthesizer_messages(q) for q in questions])
    result = generate_ids(
      model,
      ids,
      prefix=prefix,
      position_offsets=np.asarray(lmax),
      lora=lora,
      lora_scale=scale,
      **common,
    )
    ttft = prefix_s + result.prefill_s
  return SynthesisResult(
    method=method,
    texts=decode_texts(tokenizer, result, stops),
    ttft_s=ttft,
    prompt_tokens=result.prompt_lengths,
    generated_tokens=result.num_tokens,
  )
