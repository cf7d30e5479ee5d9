"""Time-to-first-token of text synthesis vs Parallel-Synthesis (DESIGN.md 2.10).

Per cell (N branches of exactly L tokens each) it times, interleaved round-robin so that
machine load affects every path alike:

  text                 the synthesizer prompt that contains all N branch texts: prefill +
                       first token (`generation._prefill`, the jitted piece `synthesize` runs).
  parallel_synthesis   re-encode + mapper + merge (`synthesis._build_prefix`) and the
                       synthesizer-prompt prefill over the merged cache with the LoRA +
                       first token (`generation._prefill` with a prefix), timed together.
  floor                the same synthesizer-prompt prefill alone, over a prefix built
                       beforehand (the least a cache method can cost).
  torch_text           transformers/PyTorch eager on the same text-prompt token ids: one
                       forward under torch.no_grad (logits of the last position only) + argmax.

Both JAX paths run device-synchronised; compilation is excluded (each program is warmed up
first; warm-up and compile times are recorded). Repeats shrink (never below min_repeats) where
one call exceeds path_budget_s / repeats; text prompts above text_max_tokens/torch_max_tokens
are compiled ahead of time and timed once (or skipped), and prompts beyond the model's context
are never run (the cache methods still are: their positions only reach L + |Q|). The text
prompt's token ids are assembled directly (template tokens + the branch ids + question
tokens), never decoded and re-encoded, so both methods see exactly the same branch tokens.

Memory: for the JAX paths the XLA compiled memory analysis of each program
(`jitted.lower(...).compile().memory_analysis()`: argument, output, temp bytes); for torch the
peak growth of the process's resident set (sampled from /proc/self/statm every ~1 ms) during
its warm-up call.

Use `run(model, tokenizer, TTFTConfig(...), torch_model=...)` then `write(result, stem)`; a
tokenizer of None runs on random token ids (tiny test models).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax import generation, synthesis, workers
from ps_jax.adapter import Adapter
from ps_jax.bench import report
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.generation import SamplingConfig
from ps_jax.prompts import PromptTemplates

PATHS = ("text", "parallel_synthesis", "floor", "torch_text")
JAX_PATHS = ("text", "parallel_synthesis", "floor")
_MARKER = "@@PS_BRANCH_{}@@"
_MARKER_RE = re.compile(r"@@PS_BRANCH_(\d+)@@")


@dataclasses.dataclass(frozen=True)
class TTFTConfig:
  """What the TTFT benchmark measures (see configs/bench_ttft.py for the documented fields)."""

  num_branches: Sequence[int] = (2, 3, 4, 8)
  branch_lengths: Sequence[int] = (128, 512, 2048)
  question: str = "Which final answer do the agents support? Reply with the answer only."
  branch_source: str = "text"  # "text": English text (Python's pydoc topics) | "random" ids
  synth_prompt_tokens: int = 64  # without a tokenizer: random-id synthesizer prompt length
  repeats: int = 5  # timed repeats per path and cell (after warm-up) ...
  min_repeats: int = 2  # ... reduced down to this where one run exceeds path_budget_s / repeats
  path_budget_s: float = 60.0  # timed seconds per path and cell before repeats are reduced
  warmup: int = 1  # untimed calls per path and cell (the first one compiles)
  exact_lengths: bool = True  # prompts unpadded; False: the library's default length buckets
  max_new_tokens: int = 1  # decode-cache room after the prompt (as synthesize(max_new_tokens))
  torch_reference: bool = True  # time torch_text (needs torch_model)
  memory: bool = True  # XLA memory analysis (JAX) and RSS peak (torch)
  # Full protocol (warm-up + repeats) for text prompts up to these many tokens (0: no cap);
  # above, `above_max` decides: "single" (compiled ahead, one timed call) or "skip".
  text_max_tokens: int = 0  # the ps_jax text path
  torch_max_tokens: int = 0  # the torch text path
  above_max: str = "single"
  compile_check_lengths: Sequence[int] = (300, 400, 500)  # branch lengths in one bucket
  compile_check_branches: int = 3
  adapter_seed: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.branch_source not in ("text", "random"):
      raise ValueError(f"branch_source={self.branch_source!r}; expected 'text' or 'random'")
    if self.repeats < 1 or self.min_repeats < 1 or self.min_repeats > self.repeats:
      raise ValueError(f"need 1 <= min_repeats ({self.min_repeats}) <= repeats ({self.repeats})")
    if not self.num_branches or not self.branch_lengths:
      raise ValueError("num_branches and branch_lengths must be non-empty")
    if min(self.branch_lengths) < 1 or min(self.num_branches) < 1:
      raise ValueError("branch lengths and branch counts must be >= 1")
    if self.above_max not in ("single", "skip"):
      raise ValueError(f"above_max={self.above_max!r}; expected 'single' or 'skip'")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")


# ------------------------------------------------------------------------------------------
# Token ids: branches and prompts.


def english_text() -> str:
  """Deterministic English prose available offline: Python's pydoc topic texts."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  topics = pydoc_data.topics.topics
  return "\n\n".join(topics[k] for k in sorted(topics))


def special_ids(model, tokenizer) -> set[int]:
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


def branch_ids(model, tokenizer, length: int, config: TTFTConfig) -> list[int]:
  """The first `length` token ids of English text (or random non-special ids)."""
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
  config: TTFTConfig,
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


# ------------------------------------------------------------------------------------------
# Measurement helpers.


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSPeak:
  """Peak growth of this process's resident set inside the block (sampled every ~1 ms)."""

  def __init__(self, interval_s: float = 0.001):
    self.interval_s = interval_s
    self.baseline = self.peak = 0
    self._stop = threading.Event()
    self._thread = None

  def _sample(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _rss_bytes())
      time.sleep(self.interval_s)

  def __enter__(self):
    self.baseline = self.peak = _rss_bytes()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())

  @property
  def delta(self) -> int:
    return self.peak - self.baseline


def xla_memory(fn, *args, **kwargs) -> dict[str, int] | None:
  """XLA's memory plan of fn's program for these arguments (bytes); None if unavailable."""
  try:
    stats = fn.lower(*args, **kwargs).compile().memory_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without the analysis)
    return None
  if stats is None:
    return None
  out = {
    name: int(getattr(stats, f"{name}_size_in_bytes"))
    for name in ("argument", "output", "temp", "alias", "generated_code")
  }
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def _sync_first_token(state) -> int:
  return int(np.asarray(jax.block_until_ready(state).next_token)[0])


@dataclasses.dataclass
class _Path:
  """One timed path of a cell: `once()` -> (seconds, {part: seconds}, first token id)."""

  once: Callable[[], tuple[float, dict[str, float], int]]
  memory: Callable[[], dict[str, Any] | None] | None = None
  is_jax: bool = True
  single: bool = False  # no warm-up call (compiled ahead), one timed call


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


# ------------------------------------------------------------------------------------------
# The benchmark.


class _Runner:
  """Holds the model pieces and builds the timed paths of each cell."""

  def __init__(self, model, tokenizer, config: TTFTConfig, torch_model, adapter):
    self.model, self.tokenizer, self.config = model, tokenizer, config
    self.torch_model = torch_model
    self.adapter = (
      adapter if adapter is not None else Adapter.create(model.config, seed=config.adapter_seed)
    )
    self.graphdef, self.params = nnx.split(model)
    mapper, lora, scale = synthesis._adapter_parts(  # pylint: disable=protected-access
      self.adapter, "parallel_synthesis", model, model.dtype
    )
    self.mapper_graphdef, self.mapper_params = synthesis._split_optional(mapper)  # pylint: disable=protected-access
    self.lora, self.lora_scale = lora, float(scale)
    self.rng = jax.random.key(config.seed)
    self.statics = dict(sampling=SamplingConfig(), num_samples=1)
    self._one_branch: dict[int, Branches] = {}

  # -- inputs ----------------------------------------------------------------------------

  def pad_len(self, n: int) -> int:
    return (
      n if self.config.exact_lengths else bucket(n, DEFAULT_LENGTH_BUCKETS, what="prompt length")
    )

  def as_tokens(self, ids: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    t = self.pad_len(len(ids))
    tokens = np.zeros((1, t), np.int32)
    tokens[0, : len(ids)] = ids
    return jnp.asarray(tokens), jnp.asarray([len(ids)], jnp.int32)

  def branches(self, ids: list[int], n: int) -> Branches:
    length = len(ids)
    if length not in self._one_branch:
      self._one_branch[length] = workers.encode_branches(self.model, self.tokenizer, [[ids]])
    return replicate_branches(self._one_branch[length], n)

  # -- the programs ------------------------------------------------------------------------

  def prefill_args(self, tokens, lengths, offsets, prefix, lora):
    kwargs = dict(
      cache_len=tokens.shape[1] + self.config.max_new_tokens,
      lora_scale=self.lora_scale if lora is not None else 0.0,
      **self.statics,
    )
    return (self.graphdef, self.params, tokens, lengths, offsets, self.rng, prefix, lora), kwargs

  def text_path(self, text_ids: list[int]) -> _Path:
    tokens, lengths = self.as_tokens(text_ids)
    args, kwargs = self.prefill_args(tokens, lengths, jnp.zeros((1,), jnp.int32), None, None)

    def once():
      seconds, state = _timed(lambda: jax.block_until_ready(generation._prefill(*args, **kwargs)))  # pylint: disable=protected-access
      return seconds, {}, _sync_first_token(state)

    return _Path(once, lambda: {"prefill": xla_memory(generation._prefill, *args, **kwargs)})  # pylint: disable=protected-access

  def build_prefix(self, caches: BranchCaches):
    return synthesis._build_prefix(
      self.model.config,
      self.mapper_graphdef,  # pylint: disable=protected-access
      self.mapper_params,
      caches,
    )

  def ps_paths(self, branches: Branches, latent_ids: list[int]) -> tuple[_Path, _Path]:
    caches = branches.caches
    tokens, lengths = self.as_tokens(latent_ids)

    def ps_once():
      start = time.perf_counter()
      prefix, lmax = jax.block_until_ready(self.build_prefix(caches))
      built = time.perf_counter()
      # As synthesize: the per-row position offsets (Lmax) go through the host.
      offsets = jnp.asarray(np.asarray(lmax), jnp.int32)
      args, kwargs = self.prefill_args(tokens, lengths, offsets, prefix, self.lora)
      state = jax.block_until_ready(generation._prefill(*args, **kwargs))  # pylint: disable=protected-access
      end = time.perf_counter()
      return (
        end - start,
        {"build_prefix": built - start, "prefill": end - built},
        _sync_first_token(state),
      )

    floor_inputs = []  # the prefix is built on first use, so PS's warm-up compiles it

    def floor_args():
      if not floor_inputs:
        prefix, lmax = jax.block_until_ready(self.build_prefix(caches))
        offsets = jnp.asarray(np.asarray(lmax), jnp.int32)
        floor_inputs.append(self.prefill_args(tokens, lengths, offsets, prefix, self.lora))
      return floor_inputs[0]

    def floor_once():
      fargs, fkwargs = floor_args()
      seconds, state = _timed(lambda: jax.block_until_ready(generation._prefill(*fargs, **fkwargs)))  # pylint: disable=protected-access
      return seconds, {}, _sync_first_token(state)

    def ps_memory():
      fargs, fkwargs = floor_args()
      return {
        "build_prefix": xla_memory(
          synthesis._build_prefix,
          self.model.config,  # pylint: disable=protected-access
          self.mapper_graphdef,
          self.mapper_params,
          caches,
        ),
        "prefill": xla_memory(generation._prefill, *fargs, **fkwargs),
      }  # pylint: disable=protected-access

    def floor_memory():
      fargs, fkwargs = floor_args()
      return {"prefill": xla_memory(generation._prefill, *fargs, **fkwargs)}  # pylint: disable=protected-access

    return _Path(ps_once, ps_memory), _Path(floor_once, floor_memory)

  def torch_path(self, text_ids: list[int]) -> _Path:
    import torch  # pylint: disable=import-outside-toplevel

    ids = torch.as_tensor([list(text_ids)], dtype=torch.long)
    hf = self.torch_model

    def forward():
      with torch.no_grad():
        out = hf(input_ids=ids, logits_to_keep=1)
        return int(out.logits[0, -1].argmax())

    def once():
      seconds, token = _timed(forward)
      return seconds, {}, token

    return _Path(once, None, is_jax=False)


def _summarize_parts(parts: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  if not parts or not parts[0]:
    return {}
  return {k: report.summarize([p[k] for p in parts]) for k in parts[0]}


def _extra_bytes(path: str, mem: Mapping[str, Any] | None) -> int | None:
  """Working memory a JAX path allocates beyond its inputs (XLA plan: outputs + temps).

  parallel_synthesis: the prefix (build output) stays alive through the prefill, so
  max(build temp + out, build out + prefill temp + out).
  """
  if not mem or any(v is None for v in mem.values()):
    return None
  p = mem["prefill"]
  if path == "parallel_synthesis":
    b = mem["build_prefix"]
    return max(b["temp"] + b["output"], b["output"] + p["temp"] + p["output"])
  return p["temp"] + p["output"]


def _measure_cell(paths: Mapping[str, _Path], config: TTFTConfig, log) -> dict[str, Any]:
  """Warm-up, then round-robin timed repeats of every path (adaptive repeat counts).

  A path marked `single` (a text prompt above the full-protocol cap) gets no warm-up call:
  its program is compiled ahead of time (the memory analysis compiles it; the jitted call
  then reuses that executable) and it is timed once.
  """
  out: dict[str, Any] = {}
  rss_of: dict[str, RSSPeak] = {}
  for name, path in paths.items():
    rec: dict[str, Any] = {"status": "ok", "protocol": "single" if path.single else "full"}
    rss = RSSPeak() if (config.memory and not path.is_jax) else None
    warm = []
    with report.jax_compile_events() as events:
      if path.single:
        memory = path.memory() if path.memory is not None else None
      else:
        for i in range(config.warmup):
          if rss is not None and i == 0:
            with rss:
              warm.append(path.once()[0])
          else:
            warm.append(path.once()[0])
        memory = path.memory() if (config.memory and path.memory is not None) else None
    rec["warmup_s"] = warm
    rec["compile_events_s"] = dict(events)
    if config.memory and path.is_jax and memory is not None:
      rec["memory"] = {
        "kind": "xla_memory_analysis",
        "programs": memory,
        "working_bytes": _extra_bytes(name, memory),
      }
    if rss is not None:
      rss_of[name] = rss
    out[name] = rec
  samples = {name: [] for name in paths}
  parts = {name: [] for name in paths}
  tokens = {name: [] for name in paths}

  def once(name, path):
    rss = rss_of.get(name) if (path.single and not samples[name]) else None
    if rss is not None:
      with rss:
        seconds, p, tok = path.once()
    else:
      seconds, p, tok = path.once()
    samples[name].append(seconds)
    parts[name].append(p)
    tokens[name].append(tok)
    return seconds

  target = {}
  for name, path in paths.items():  # round 1 sets each path's repeat count
    seconds = once(name, path)
    fits = int(config.path_budget_s // max(seconds, 1e-9))
    target[name] = 1 if path.single else max(config.min_repeats, min(config.repeats, fits))
  for i in range(1, max(target.values(), default=1)):
    for name, path in paths.items():
      if i < target[name]:
        once(name, path)
  for name in paths:
    rec = out[name]
    if name in rss_of and (config.warmup > 0 or paths[name].single):
      rec["memory"] = {"kind": "rss_peak_delta", "working_bytes": rss_of[name].delta}
    rec["ttft_s"] = report.summarize(samples[name])
    rec["repeats"] = len(samples[name])
    rec["reduced_repeats"] = len(samples[name]) < config.repeats
    rec["parts_s"] = _summarize_parts(parts[name])
    rec["first_token"] = tokens[name][0]
    rec["first_token_stable"] = len(set(tokens[name])) == 1
    log(
      f"    {name:<20s} median {rec['ttft_s']['median']:.4f} s "
      f"(min {rec['ttft_s']['min']:.4f}, max {rec['ttft_s']['max']:.4f}, "
      f"n={rec['repeats']}{', single run' if paths[name].single else ''})"
    )
  return out


def compile_check(runner: _Runner, config: TTFTConfig, log) -> dict[str, Any]:
  """Parallel-Synthesis over several branch lengths inside one length bucket: programs
  compiled by each jitted piece (`fn._cache_size()` growth), expected 1 each."""
  lengths = list(config.compile_check_lengths)
  if not lengths:
    return {}
  buckets = {bucket(n, DEFAULT_LENGTH_BUCKETS, what="branch length") for n in lengths}
  fns = {
    "encode_branches (_prefill_rows)": workers._prefill_rows,  # pylint: disable=protected-access
    "_build_prefix": synthesis._build_prefix,  # pylint: disable=protected-access
    "_prefill": generation._prefill,  # pylint: disable=protected-access
    "_decode": generation._decode,
  }  # pylint: disable=protected-access
  before = {k: f._cache_size() for k, f in fns.items()}  # pylint: disable=protected-access
  per_length, n = [], config.compile_check_branches
  model, tok = runner.model, runner.tokenizer
  base = branch_ids(model, tok, max(lengths), config)
  for length in lengths:
    step = {k: f._cache_size() for k, f in fns.items()}  # pylint: disable=protected-access
    branches = workers.encode_branches(model, tok, [[base[:length]] * n])
    if tok is not None:
      res = synthesis.synthesize(
        model,
        tok,
        branches,
        [config.question],
        method="parallel_synthesis",
        adapter=runner.adapter,
        max_new_tokens=1,
      )
      ttft = res.ttft_s
    else:  # no tokenizer for the templates: the same jitted pieces on random prompt ids
      latent = prompts_for(model, None, n, config).latent
      ps, _ = runner.ps_paths(branches, latent)
      ps.once()
      ttft = ps.once()[0]
    per_length.append(
      {
        "branch_length": length,
        "ttft_s": ttft,
        "new_programs": {k: f._cache_size() - step[k] for k, f in fns.items()},
      }
    )  # pylint: disable=protected-access
  programs = {k: f._cache_size() - before[k] for k, f in fns.items()}  # pylint: disable=protected-access
  result = {
    "num_branches": n,
    "branch_lengths": lengths,
    "length_buckets": sorted(buckets),
    "api": "ps_jax.synthesize" if tok is not None else "jitted pieces",
    "programs_compiled": programs,
    "per_length": per_length,
    "compiled_once": len(buckets) == 1 and all(v <= 1 for v in programs.values()),
  }
  log(f"compile check: lengths {lengths} (buckets {sorted(buckets)}): programs {programs}")
  return result


def run(
  model,
  tokenizer,
  config: TTFTConfig = TTFTConfig(),
  *,
  torch_model=None,
  adapter: Adapter | None = None,
  model_name: str = "",
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Runs the TTFT grid; returns the result dict that `write` turns into JSON/markdown/PNG."""
  start = time.perf_counter()
  runner = _Runner(model, tokenizer, config, torch_model, adapter)
  use_torch = config.torch_reference and torch_model is not None
  limit = model.config.max_position_embeddings
  check = compile_check(runner, config, log)
  cells = []
  for length in sorted(config.branch_lengths):
    ids = branch_ids(model, tokenizer, length, config)
    for n in sorted(config.num_branches):
      prompts = prompts_for(model, tokenizer, n, config)
      text_ids = prompts.text_ids([ids] * n)
      branches = runner.branches(ids, n)
      cell: dict[str, Any] = {
        "num_branches": n,
        "branch_length": length,
        "branch_tokens": n * length,
        "branch_bucket": int(branches.caches.k.shape[2]),
        "branch_slots": int(branches.caches.k.shape[3]),
        "synth_prompt_tokens": len(prompts.latent),
        "synth_prompt_padded": runner.pad_len(len(prompts.latent)),
        "text_prompt_tokens": len(text_ids),
        "text_prompt_padded": runner.pad_len(len(text_ids)),
        "ps_max_position": length + len(prompts.latent) + config.max_new_tokens - 1,
      }
      if tokenizer is not None:  # what re-tokenizing the decoded text would have given
        texts = [tokenizer.decode(ids, skip_special_tokens=True)] * n
        cell["library_text_prompt_tokens"] = len(
          generation.encode_prompts(
            tokenizer, [PromptTemplates().text_synthesizer_messages(config.question, texts)]
          )[0]
        )
      skipped = {}
      if len(text_ids) + config.max_new_tokens > limit:
        skipped["text"] = skipped["torch_text"] = (
          f"exceeds the model's {limit}-position context ({len(text_ids)} prompt tokens "
          f"+ {config.max_new_tokens})"
        )
      single = set()
      for name, cap in (("text", config.text_max_tokens), ("torch_text", config.torch_max_tokens)):
        if cap and len(text_ids) > cap and name not in skipped:
          if config.above_max == "single":
            single.add(name)
          else:
            skipped[name] = (
              f"not run: {len(text_ids):,} prompt tokens > "
              f"{name.split('_')[0]}_max_tokens={cap:,} (time budget)"
            )
      if not use_torch:
        skipped.setdefault("torch_text", "not run (no torch model / torch_reference=False)")
      paths: dict[str, _Path] = {}
      if "text" not in skipped:
        paths["text"] = runner.text_path(text_ids)
      paths["parallel_synthesis"], paths["floor"] = runner.ps_paths(branches, prompts.latent)
      if "torch_text" not in skipped:
        paths["torch_text"] = runner.torch_path(text_ids)
      for name in single:
        paths[name].single = True
      log(
        f"cell N={n} L={length}: text prompt {len(text_ids)} tokens, synthesizer prompt "
        f"{len(prompts.latent)} tokens, branch bucket {cell['branch_bucket']}"
      )
      load_before = _load()
      measured = _measure_cell(paths, config, log)
      cell["load_average_1m"] = [load_before, _load()]
      cell["paths"] = {
        name: measured.get(name, {"status": "skipped", "reason": skipped.get(name)})
        for name in PATHS
      }
      cell["ratios"] = _ratios(cell["paths"])
      if "text" in measured and "torch_text" in measured:
        cell["text_first_token_matches_torch"] = (
          measured["text"]["first_token"] == measured["torch_text"]["first_token"]
        )
      cells.append(cell)
      del branches
  env_extra = {}
  if torch_model is not None:
    import torch  # pylint: disable=import-outside-toplevel

    env_extra["torch_threads"] = torch.get_num_threads()
    env_extra["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    env_extra["torch_attn_implementation"] = getattr(
      getattr(torch_model, "config", None), "_attn_implementation", None
    )
  return {
    "benchmark": "ttft",
    "model": model_name,
    "model_config": {k: v for k, v in dataclasses.asdict(model.config).items()},
    "dtype": str(model.dtype),
    "config": dataclasses.asdict(config),
    "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
    "environment": report.environment(**env_extra),
    "compile_check": check,
    "cells": cells,
    "targets": _targets(cells),
    "wall_s": time.perf_counter() - start,
  }


def _load() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def _median(paths, name) -> float | None:
  p = paths.get(name) or {}
  return p["ttft_s"]["median"] if p.get("status") == "ok" else None


def _ratio(a, b):
  return None if a is None or b is None or b <= 0 else a / b


def _ratios(paths) -> dict[str, float | None]:
  text, ps, floor, torch_ = (_median(paths, k) for k in PATHS)
  build = ((paths.get("parallel_synthesis") or {}).get("parts_s") or {}).get("build_prefix")
  # PS = build + the floor's program: (build + floor) / floor uses only the two medians, so
  # load noise between the PS and floor calls does not enter it.
  from_parts = None if build is None or floor is None else (build["median"] + floor) / floor
  return {
    "text_over_ps": _ratio(text, ps),
    "torch_text_over_ps": _ratio(torch_, ps),
    "ps_over_floor": _ratio(ps, floor),
    "ps_over_floor_from_parts": from_parts,
    "text_over_torch_text": _ratio(text, torch_),
  }


# (N, L, minimum text/PS ratio) from the paper's 2.5x-11x; PS within 1.5x of its floor.
TARGETS = ((3, 512, 2.5), (8, 2048, 11.0))
FLOOR_TARGET = 1.5


def _targets(cells) -> dict[str, Any]:
  by = {(c["num_branches"], c["branch_length"]): c for c in cells}
  ratios = []
  for n, length, want in TARGETS:
    c = by.get((n, length))
    entry = {"num_branches": n, "branch_length": length, "target_text_over_ps": want}
    if c is None:
      entry["status"] = "cell not in this run"
    else:
      got = c["ratios"]["text_over_ps"]
      entry["text_over_ps"] = got
      entry["torch_text_over_ps"] = c["ratios"]["torch_text_over_ps"]
      if got is None:
        entry["status"] = "text not measured: " + str(c["paths"]["text"].get("reason"))
      else:
        entry["status"] = "met" if got >= want else "not met"
    ratios.append(entry)
  floors = [c["ratios"]["ps_over_floor"] for c in cells if c["ratios"]["ps_over_floor"]]
  parts = [c["ratios"].get("ps_over_floor_from_parts") for c in cells]
  parts = [p for p in parts if p]
  return {
    "text_over_ps": ratios,
    "ps_over_floor_target": FLOOR_TARGET,
    "ps_over_floor_max": max(floors) if floors else None,
    "ps_over_floor_all_met": bool(floors) and all(f <= FLOOR_TARGET for f in floors),
    "ps_over_floor_from_parts_max": max(parts) if parts else None,
  }


# ------------------------------------------------------------------------------------------
# Output.


def _sec(x: float) -> str:
  """Seconds with 3 significant digits."""
  return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _spread(s: Mapping[str, Any] | None) -> str:
  if not s:
    return "-"
  return f"{_sec(s['median'])} ({_sec(s['min'])}-{_sec(s['max'])})"


# Short marks for skipped paths in the table (explained under it).
_SKIP_MARKS = (
  ("exceeds the model's", "over context (a)"),
  ("not run: ", "not run (b)"),
  ("not run (no torch", "not run (c)"),
)


def _path_cell(p: Mapping[str, Any]) -> str:
  if p.get("status") != "ok":
    reason = p.get("reason") or ""
    for prefix, mark in _SKIP_MARKS:
      if reason.startswith(prefix):
        return mark
    return reason or "-"
  if p.get("protocol") == "single":
    return f"{_sec(p['ttft_s']['median'])} (d)"
  text = _spread(p["ttft_s"])
  if p.get("reduced_repeats"):
    text += f" n={p['repeats']}"
  return text


def _x(r: float | None) -> str:
  return "-" if r is None else f"{r:,.1f}x" if r >= 10 else f"{r:,.2f}x"


def _mb(p: Mapping[str, Any]) -> str:
  mem = p.get("memory") or {}
  b = mem.get("working_bytes")
  if b is None:
    return "-"
  return f"{b / 2**20:,.0f}" if b >= 10 * 2**20 else f"{b / 2**20:.1f}"


def _load_text(env: Mapping[str, Any]) -> str:
  load = env.get("load_average_1_5_15")
  return "n/a" if not load else f"{load[0]:.1f}"


def markdown(result: Mapping[str, Any]) -> str:
  env = result["environment"]
  cfg = result["config"]
  lines = [
    "# Time to first token: text synthesis vs Parallel-Synthesis",
    "",
    f"Model: {result['model'] or 'custom'} ({result['dtype']}); device: "
    f"{report.device_name(env)}; jax {env['versions'].get('jax')}, torch "
    f"{env['versions'].get('torch')}, transformers {env['versions'].get('transformers')}. "
    f"Run {env['time_utc']}, {result['wall_s'] / 60:.1f} min; 1-minute load average at "
    f"the end {_load_text(env)} on {env.get('cpu_cores')} cores (other processes shared the "
    "machine; per-cell load averages are in the JSON).",
    "",
    "TTFT in seconds: median (min-max) over the timed repeats "
    f"({cfg['repeats']} per path and cell after {cfg['warmup']} warm-up call(s); `n=` marks "
    f"paths where one call took longer than {cfg['path_budget_s']:.0f} s / {cfg['repeats']} "
    f"and the repeats were reduced to fit {cfg['path_budget_s']:.0f} s, at least "
    f"{cfg['min_repeats']}). Ratios are of medians. PS = `build` (re-encode + mapper + "
    "merge; median shown) + the synthesizer-prompt prefill; `floor` = that prefill alone. "
    "Working memory in MiB: text / PS / floor / torch (see *What is measured*).",
    "",
  ]
  headers = [
    "N",
    "L",
    "branch tok",
    "text prompt tok",
    "text s",
    "PS s",
    "text/PS",
    "build s",
    "floor s",
    "PS/floor",
    "torch text s",
    "torch/PS",
    "memory MiB",
  ]
  rows = []
  for c in result["cells"]:
    p, r = c["paths"], c["ratios"]
    build = (p["parallel_synthesis"].get("parts_s") or {}).get("build_prefix")
    rows.append(
      [
        c["num_branches"],
        c["branch_length"],
        f"{c['branch_tokens']:,}",
        f"{c['text_prompt_tokens']:,}",
        _path_cell(p["text"]),
        _path_cell(p["parallel_synthesis"]),
        _x(r["text_over_ps"]),
        _sec(build["median"]) if build else "-",
        _path_cell(p["floor"]),
        _x(r["ps_over_floor"]),
        _path_cell(p["torch_text"]),
        _x(r["torch_text_over_ps"]),
        " / ".join(_mb(p[k]) for k in PATHS),
      ]
    )
  lines.append(report.markdown_table(headers, rows))
  notes = []
  reasons = [c["paths"][k].get("reason") or "" for c in result["cells"] for k in PATHS]
  if any(x.startswith("exceeds the model's") for x in reasons):
    notes.append(
      f"(a) the text prompt (N*L branch tokens + template) does not fit the "
      f"model's {result['model_config']['max_position_embeddings']:,}-position "
      "context, so text synthesis cannot run; the cache methods only need positions "
      "up to L + the synthesizer prompt (`ps_max_position` in the JSON)."
    )
  if any(x.startswith("not run: ") for x in reasons):
    notes.append(
      f"(b) time budget: prompts above text_max_tokens={cfg['text_max_tokens']:,} "
      f"(ps_jax text) / torch_max_tokens={cfg.get('torch_max_tokens', 0):,} "
      "(torch; 0 = no cap) were not run; set the cap to 0 to run them."
    )
  if any(x.startswith("not run (no torch") for x in reasons):
    notes.append("(c) no torch model was given.")
  if any(c["paths"][k].get("protocol") == "single" for c in result["cells"] for k in PATHS):
    notes.append(
      f"(d) one timed call, no warm-up call: text prompts above "
      f"text_max_tokens={cfg['text_max_tokens']:,} (ps_jax text) / torch_max_tokens="
      f"{cfg.get('torch_max_tokens', 0):,} (torch; 0 = no cap) are compiled ahead of "
      "time and timed once (time budget); set the cap to 0 for the full protocol."
    )
  if notes:
    lines += [""] + notes
  lines += ["", "## Targets (reported, not asserted)", ""]
  t = result["targets"]
  for e in t["text_over_ps"]:
    got = e.get("text_over_ps")
    extra = ""
    if e.get("torch_text_over_ps") is not None:
      extra = f"; torch text / PS {_x(e['torch_text_over_ps'])}"
    lines.append(
      f"- text/PS at N={e['num_branches']}, L={e['branch_length']}: "
      f"{_x(got) if got is not None else 'n/a'} (target >= {e['target_text_over_ps']}x)"
      f": {e['status']}{extra}."
    )
  if t["ps_over_floor_max"] is not None:
    lines.append(
      f"- PS / floor: at most {t['ps_over_floor_max']:.2f}x over all cells (target "
      f"<= {t['ps_over_floor_target']}x): "
      f"{'met' if t['ps_over_floor_all_met'] else 'not met in every cell'}."
    )
  if t.get("ps_over_floor_from_parts_max") is not None:
    lines.append(
      f"- (build + floor) / floor, from the medians of PS's build part and of the "
      f"floor (insensitive to load swings between the two calls): at most "
      f"{t['ps_over_floor_from_parts_max']:.2f}x."
    )
  measured = [c for c in result["cells"] if c["ratios"]["text_over_ps"] is not None]
  if measured:
    big = max(measured, key=lambda c: c["branch_tokens"])
    tr = big["ratios"]["torch_text_over_ps"]
    lines.append(
      f"- Largest cell with a measured text TTFT: N={big['num_branches']}, "
      f"L={big['branch_length']} ({big['text_prompt_tokens']:,} prompt tokens): "
      f"text/PS {_x(big['ratios']['text_over_ps'])}"
      + (f", torch text / PS {_x(tr)}" if tr is not None else "")
      + "."
    )
  check = result.get("compile_check") or {}
  if check:
    lines += [
      "",
      "## Mixed branch lengths inside one bucket compile once",
      "",
      f"Parallel-Synthesis ({check['api']}, N={check['num_branches']}) over branch "
      f"lengths {check['branch_lengths']} (length bucket(s) {check['length_buckets']}): "
      "programs compiled by each jitted piece (`fn._cache_size()` growth): "
      + ", ".join(f"`{k}` {v}" for k, v in check["programs_compiled"].items())
      + f". Compiled once: **{check['compiled_once']}**.",
    ]
  lines += ["", "## What is measured", ""] + [f"- {x}" for x in _method_notes(result)]
  return "\n".join(lines)


def _method_notes(result) -> list[str]:
  cfg, cells = result["config"], result["cells"]
  synth = sorted({c["synth_prompt_tokens"] for c in cells})
  notes = [
    "text: `generation._prefill` (the jitted prefill `synthesize(method='text')` runs) over "
    "the text synthesizer prompt holding all N branches, plus the first (greedy) token.",
    "PS (parallel_synthesis): `synthesis._build_prefix` (re-encode + mapper + merge) then "
    "`generation._prefill` of the synthesizer prompt over the merged cache with the LoRA "
    "(`Adapter.create`: random mapper, zero-initialised LoRA B; timing does not depend on "
    "the weights), plus the first token, in one timed region as `synthesize` does.",
    "floor: that synthesizer-prompt prefill alone over a prefix built beforehand.",
    "torch text: transformers eager forward of the same text-prompt token ids under "
    "torch.no_grad (logits of the last position only, `logits_to_keep=1`) + argmax"
    + (
      f" (torch threads {result['environment'].get('torch_threads')}, attention "
      f"`{result['environment'].get('torch_attn_implementation')}`, OMP_WAIT_POLICY="
      f"{result['environment'].get('OMP_WAIT_POLICY')})."
      if "torch_threads" in result["environment"]
      else "; not run here."
    ),
    f"Synthesizer prompt: {synth} tokens "
    + (
      f"(the library's latent-synthesizer chat template with the question {cfg['question']!r})."
      if result["tokenizer"]
      else "(random ids)."
    ),
    "Branches: "
    + (
      "the first L tokens of English text (Python's pydoc topic texts, "
      "tokenized by the model's tokenizer)"
      if cfg["branch_source"] == "text" and result["tokenizer"]
      else "random non-special token ids"
    )
    + ", the same L tokens in every branch; each branch is prefilled alone from position 0 "
    "(`encode_branches`; the N-branch caches replicate one encoded branch, identical to "
    "encoding [[ids] * N]). The text prompt splices exactly the same ids between the "
    "template's pieces (N*L branch tokens + template).",
    "Prompt padding: "
    + (
      "none (exact lengths) for the text and synthesizer prompts"
      if cfg["exact_lengths"]
      else "the library's default length buckets"
    )
    + "; the cache methods pad the branch count to the library's branch buckets (1, 2, 4, 8): "
    "N=3 reads 4 branch slots of which one is masked.",
    f"Both prefills allocate their decode cache as `synthesize(max_new_tokens="
    f"{cfg['max_new_tokens']})` would (prompt + {cfg['max_new_tokens']} slots). The ps_jax "
    "prefill attends over that (empty, masked) decode cache as well as over the prompt and "
    "materialises fp32 attention scores, so its text TTFT and memory grow ~quadratically "
    "with the prompt; the torch reference uses fused sdpa attention.",
    "Paths are interleaved round-robin per repeat, so background load hits them alike; the "
    "1-minute load average before/after each cell is in the JSON.",
    "Memory (MiB): JAX paths: XLA's compiled memory analysis, working bytes = output + temp "
    "(for PS: max(build temp + out, build out + prefill temp + out), since the merged "
    "prefix stays alive through the prefill); arguments (weights "
    "~0.54 GB fp32 for SmolLM2, branch caches) are listed per program in the JSON. torch: "
    "peak growth of the process resident set (sampled every ~1 ms) during the warm-up "
    "call (allocator reuse can make it an underestimate).",
  ]
  return notes


def write_plot(result: Mapping[str, Any], path: str) -> None:
  """TTFT vs total branch tokens (log-log); colour per path, marker per branch length L."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

  colors = {
    "text": "tab:red",
    "parallel_synthesis": "tab:blue",
    "floor": "tab:green",
    "torch_text": "tab:orange",
  }
  labels = {
    "text": "text (ps_jax)",
    "parallel_synthesis": "parallel_synthesis",
    "floor": "floor (prefill over merged cache)",
    "torch_text": "text (torch eager)",
  }
  markers = ["o", "s", "^", "D", "v", "P"]
  lengths = sorted({c["branch_length"] for c in result["cells"]})
  fig, ax = plt.subplots(figsize=(9.5, 5))
  for name in PATHS:
    for j, length in enumerate(lengths):
      pts = sorted(
        (
          c["branch_tokens"],
          c["paths"][name]["ttft_s"]["median"],
          c["paths"][name].get("protocol") == "single",
        )
        for c in result["cells"]
        if c["branch_length"] == length and c["paths"][name].get("status") == "ok"
      )
      if pts:
        xs, ys, single = zip(*pts, strict=True)
        marker = markers[j % len(markers)]
        ax.plot(xs, ys, color=colors[name], linewidth=1.2)
        # hollow: a single timed call (no warm-up)
        for x, y, one in zip(xs, ys, single, strict=True):
          ax.plot(
            [x],
            [y],
            color=colors[name],
            marker=marker,
            markersize=5,
            markerfacecolor="white" if one else colors[name],
          )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("total branch tokens (N x L)")
  ax.set_ylabel("time to first token (s, median)")
  ax.set_title(
    f"TTFT, {result['model'] or 'model'} ({result['dtype']})\n"
    f"{report.device_name(result['environment'])}",
    fontsize=9,
  )
  handles = [
    Line2D([], [], color=colors[n], label=labels[n])
    for n in PATHS
    if any(c["paths"][n].get("status") == "ok" for c in result["cells"])
  ]
  handles += [
    Line2D(
      [], [], color="gray", linestyle="", marker=markers[j % len(markers)], label=f"L = {length}"
    )
    for j, length in enumerate(lengths)
  ]
  if any(c["paths"][n].get("protocol") == "single" for c in result["cells"] for n in PATHS):
    handles.append(
      Line2D(
        [],
        [],
        color="gray",
        linestyle="",
        marker="o",
        markerfacecolor="white",
        label="one timed call (d)",
      )
    )
  ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(result: Mapping[str, Any], stem: str) -> dict[str, str]:
  """Writes stem.json, stem.md and stem.png; returns their paths."""
  paths = report.write_report(stem, result, markdown(result))
  paths["png"] = stem + ".png"
  write_plot(result, paths["png"])
  return paths


def rerender(stem: str) -> dict[str, str]:
  """Rewrites stem.md and stem.png from stem.json (e.g. after a change of the layout)."""
  import json  # pylint: disable=import-outside-toplevel

  with open(stem + ".json") as f:
    result = json.load(f)
  with open(stem + ".md", "w") as f:
    f.write(markdown(result).rstrip() + "\n")
  write_plot(result, stem + ".png")
  return {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}


def config_from_dict(d: Mapping[str, Any]) -> TTFTConfig:
  """TTFTConfig from a mapping (e.g. a ConfigDict's fields), ignoring unknown keys."""
  names = {f.name for f in dataclasses.fields(TTFTConfig)}
  kwargs = {
    k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items() if k in names
  }
  return TTFTConfig(**kwargs)


def load_torch_model(source: str):
  """transformers fp32 eager model of an embedded name, a .gguf file or an HF folder."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  from ps_jax.io.registry import EMBEDDED, embedded_path  # pylint: disable=import-outside-toplevel

  path = embedded_path(source) if source in EMBEDDED else source
  if path.endswith(".gguf"):
    hf = AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
  else:
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  return hf.eval()


__all__ = [
  "TTFTConfig",
  "Prompts",
  "PATHS",
  "branch_ids",
  "compile_check",
  "config_from_dict",
  "load_torch_model",
  "markdown",
  "prompts_for",
  "replicate_branches",
  "rerender",
  "run",
  "write",
  "write_plot",
]
