"""Inputs of the TTFT benchmark: branch token ids, the two synthesizer prompts around them, and
N-branch caches from one encoded branch.

The text prompt's token ids are assembled directly (template pieces + the branch ids), never
decoded and re-encoded, so every path of a cell reads exactly the same branch tokens.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ps_jax import generation, workers
from ps_jax.buckets import bucket
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.prompts import PromptTemplates

_MARKER = "@@PS_BRANCH_{}@@"
_MARKER_RE = re.compile(r"@@PS_BRANCH_(\d+)@@")


def english_text() -> str:
  """Deterministic English prose available offline: Python's pydoc topic texts."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  topics = pydoc_data.topics.topics
  return "\n\n".join(topics[k] for k in sorted(topics))


def special_ids(model, tokenizer) -> set[int]:
  """Ids no branch should contain: pad 0, BOS, EOS and the tokenizer's special tokens."""
  ids = {0}
  if model.config.bos_token_id is not None:
    ids.add(int(model.config.bos_token_id))
  ids.update(int(i) for i in model.config.eos_token_ids)
  if tokenizer is not None:
    ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
  return ids


def random_ids(model, tokenizer, n: int, rng: np.random.Generator) -> list[int]:
  """n token ids drawn uniformly from the model's non-special vocabulary."""
  vocab = model.config.vocab_size
  if tokenizer is not None:
    vocab = min(vocab, len(tokenizer))
  allowed = np.setdiff1d(np.arange(vocab), np.fromiter(special_ids(model, tokenizer), int))
  return [int(x) for x in rng.choice(allowed, size=n)]


def branch_ids(model, tokenizer, length: int, config) -> list[int]:
  """The first `length` token ids of English text (or random non-special ids); config: a
  TTFTConfig (branch_source, seed)."""
  if config.branch_source == "random" or tokenizer is None:
    return random_ids(model, tokenizer, length, np.random.default_rng(config.seed + length))
  text = english_text()
  chars = 8 * length + 1024
  while True:
    ids = list(tokenizer.encode(text[:chars], add_special_tokens=False))
    if len(ids) > length or chars >= len(text):
      break
    chars *= 2
  if len(ids) < length:
    raise ValueError(f"the English source text has only {len(ids)} tokens; need {length}")
  return [int(i) for i in ids[:length]]


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Token ids of both synthesizer prompts around N branches.

  text ids = text_pieces[0] + branch + text_pieces[1] + branch + ... + text_pieces[N].
  """

  latent: list[int]  # the cache methods' synthesizer prompt (no branch content)
  text_pieces: list[list[int]]  # N + 1 template pieces of the text synthesizer prompt

  def text_ids(self, branches: Sequence[Sequence[int]]) -> list[int]:
    if len(branches) + 1 != len(self.text_pieces):
      raise ValueError(f"{len(branches)} branches for {len(self.text_pieces) - 1} slots")
    out = list(self.text_pieces[0])
    for b, piece in zip(branches, self.text_pieces[1:], strict=True):
      out += list(b) + list(piece)
    return out


def prompts_for(
  model,
  tokenizer,
  num_branches: int,
  config,
  templates: PromptTemplates = PromptTemplates(),
) -> Prompts:
  """The synthesizer prompts `synthesize` would build, as token ids around the branches.

  With a tokenizer: the library's templates (chat-formatted); the text prompt is rendered with
  a marker per branch, cut at the markers and each piece tokenized alone, so the branch ids can
  be spliced in unchanged. Without: random ids (synth_prompt_tokens long; 3 header ids per
  branch in the text prompt).
  """
  if tokenizer is None:
    rng = np.random.default_rng(config.seed)
    latent = random_ids(model, None, config.synth_prompt_tokens, rng)
    tail = min(16, len(latent) - 1)
    head, end = latent[: len(latent) - tail], latent[len(latent) - tail :]
    headers = [random_ids(model, None, 3, rng) for _ in range(num_branches)]
    pieces = [head + headers[0]] + [headers[i] for i in range(1, num_branches)] + [end]
    return Prompts(latent=latent, text_pieces=pieces)
  latent = generation.encode_prompts(
    tokenizer, [templates.latent_synthesizer_messages(config.question)]
  )[0]
  messages = templates.text_synthesizer_messages(
    config.question, [_MARKER.format(i) for i in range(num_branches)]
  )
  rendered = _render(tokenizer, messages)
  parts = _MARKER_RE.split(rendered)  # [text, "0", text, "1", ..., text]
  texts, order = parts[0::2], [int(i) for i in parts[1::2]]
  if order != list(range(num_branches)):
    raise ValueError(f"the text template placed the branches as {order}")
  pieces = [list(tokenizer.encode(t, add_special_tokens=False)) if t else [] for t in texts]
  return Prompts(latent=latent, text_pieces=pieces)


def _render(tokenizer, messages) -> str:
  if getattr(tokenizer, "chat_template", None):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  return "\n".join(m["content"] for m in messages)


def replicate_branches(
  one: Branches, n: int, branch_buckets: Sequence[int] = workers.DEFAULT_BRANCH_BUCKETS
) -> Branches:
  """Branches of one example with n copies of `one`'s single branch.

  Equal to `encode_branches(model, tokenizer, [[ids] * n])` (every branch is prefilled alone
  from position 0, so identical ids give identical caches; absent branch slots hold copies of
  branch 0 with length 0, as encode_branches lays them out), at the cost of one prefill.
  """
  if one.batch_size != 1 or len(one.token_ids[0]) != 1:
    raise ValueError("replicate_branches needs Branches of one example with one branch")
  c = one.caches
  r = bucket(n, branch_buckets, what="number of branches")
  k = jnp.repeat(c.k[:, :, :1], r, axis=2)
  v = jnp.repeat(c.v[:, :, :1], r, axis=2)
  lengths = jnp.where(jnp.arange(r) < n, c.lengths[:, :1], 0).astype(jnp.int32)
  positions = jnp.repeat(c.positions[:, :1], r, axis=1)
  caches = BranchCaches(
    k=k, v=v, lengths=lengths, positions=positions, model_fingerprint=c.model_fingerprint
  )
  return Branches(token_ids=[one.token_ids[0] * n], texts=[one.texts[0] * n], caches=caches)
