"""The per-method drivers of the TTFT benchmark: one `timing.Path` per thing timed in a cell.

  text                 ps_jax text synthesis as the library runs it: `generate_ids` on the
                       text prompt (padded to the library's length bucket), TTFT = its
                       `prefill_s` (prefill + first token), what `synthesize(method="text")`
                       reports as ttft_s.
  text_floor           the raw jitted prefill (`generation._prefill`) of the same ids at their
                       exact length: the least the text path can cost in ps_jax.
  torch_text           transformers on the same ids: one forward, logits of the last position
                       only (`logits_to_keep=1`), argmax.
  parallel_synthesis   as `synthesize` composes it: `PrefixBuilder` (re-encode + mapper +
                       merge) then `generate_ids` of the synthesizer prompt over the merged
                       cache with the LoRA; TTFT = build + prefill, each device-synchronised.
  ps_floor             that synthesizer-prompt prefill alone (the same program) over a prefix
                       built beforehand: the least a cache method can cost.
  torch_ps             the reference-style PS in transformers (`torch_ps.TorchPS`), from
                       branch caches in hand to the first token.

Every call synchronises its device; compilation is excluded by the protocol's warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax import generation, synthesis, workers
from ps_jax.adapter import Adapter
from ps_jax.bench import inputs, timing
from ps_jax.bench.timing import Path, Sample
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.cache.branches import Branches
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig


def tree_bytes(tree) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


class PrefillProgram:
  """One call of the jitted prefill + first token that `generate_ids` runs, arguments fixed.

  tokens [B, T] (right-padded to `width`, default T), cache of width + extra_slots slots.
  """

  def __init__(
    self,
    model,
    prompts: Sequence[Sequence[int]],
    *,
    width: int | None = None,
    extra_slots: int = 1,
    offsets=None,
    prefix=None,
    lora=None,
    lora_scale: float = 0.0,
    prefill: PrefillConfig = DEFAULT_PREFILL,
    split=None,
  ):
    graphdef, params = split if split is not None else nnx.split(model)
    lengths = np.array([len(p) for p in prompts], np.int32)
    width = int(lengths.max()) if width is None else width
    tokens = np.zeros((len(prompts), width), np.int32)  # [B, T]
    for i, p in enumerate(prompts):
      tokens[i, : len(p)] = p
    offsets = np.zeros(len(prompts), np.int32) if offsets is None else offsets
    self.fn = generation._prefill  # pylint: disable=protected-access
    self.args = (
      graphdef,
      params,
      jnp.asarray(tokens),
      jnp.asarray(lengths),
      jnp.asarray(offsets, jnp.int32),
      jax.random.key(0),
      prefix,
      lora,
    )
    self.kwargs = dict(
      cache_len=width + extra_slots,
      sampling=generation.SamplingConfig(),
      lora_scale=float(lora_scale),
      num_samples=1,
      prefill=prefill,
    )

  def sample(self) -> Sample:
    start = time.perf_counter()
    state = jax.block_until_ready(self.fn(*self.args, **self.kwargs))
    seconds = time.perf_counter() - start
    return Sample(seconds, output=np.asarray(state.next_token).tolist())

  def memory(self) -> dict[str, int] | None:
    return timing.xla_memory(self.fn, *self.args, **self.kwargs)


def _memory_record(programs: dict[str, Any], total: int | None, weights: int) -> dict[str, Any]:
  """XLA's plan of a JAX path: its programs and the live bytes at its peak (`total`, weights
  included) and beyond the weights (`working_bytes`)."""
  return {
    "kind": "xla_memory_analysis",
    "programs": programs,
    "total_bytes": total,
    "weight_bytes": weights,
    "working_bytes": None if total is None else total - weights,
  }


class Drivers:
  """The model pieces of a TTFT run and one `Path` builder per method (module docstring)."""

  def __init__(
    self,
    model,
    tokenizer,
    *,
    adapter: Adapter,
    prefill: PrefillConfig = DEFAULT_PREFILL,
    torch_model=None,
  ):
    self.model, self.tokenizer, self.adapter, self.prefill = model, tokenizer, adapter, prefill
    self.split = nnx.split(model)
    self.weight_bytes = tree_bytes(self.split[1])
    mapper, lora, scale = synthesis.adapter_parts(adapter, "parallel_synthesis", model)
    self.prefix_builder = synthesis.PrefixBuilder.create(model.config, mapper)
    self.lora, self.lora_scale = lora, float(scale)
    # One new token is generated: the stop ids only matter for a model that names none.
    self.stop_ids = generation.stop_ids_for(model, tokenizer) or [-1]
    self.jax_peak = timing.jax_peak_probe()
    self.torch_model = torch_model
    self.torch_ps = None
    if torch_model is not None:
      from ps_jax.bench.torch_ps import TorchPS  # pylint: disable=import-outside-toplevel

      self.torch_ps = TorchPS(torch_model, adapter)
      self.torch_peak = timing.torch_peak_probe(self.torch_ps.device)
    self._one_branch: dict[tuple[int, ...], Branches] = {}
    self._torch_kv: dict[tuple[int, ...], Any] = {}

  # -- inputs ----------------------------------------------------------------------------

  def branches(self, ids: Sequence[int], n: int) -> Branches:
    """n identical branches of `ids` (one encode, replicated; see inputs.replicate_branches)."""
    key = tuple(ids)
    if key not in self._one_branch:
      self._one_branch = {key: workers.encode_branches(self.model, self.tokenizer, [[ids]])}
    return inputs.replicate_branches(self._one_branch[key], n)

  def torch_branches(self, ids: Sequence[int], n: int):
    key = tuple(ids)
    if key not in self._torch_kv:
      self._torch_kv = {key: self.torch_ps.branch_kv(ids)}
    return [self._torch_kv[key]] * n

  def _generate(self, ids, **kwargs) -> generation.GenerationResult:
    return generation.generate_ids(
      self.model, [list(ids)], max_new_tokens=1, stop_ids=self.stop_ids, prefill=self.prefill,
      **kwargs,
    )  # fmt: skip

  # -- the paths -------------------------------------------------------------------------

  def text(self, ids: Sequence[int]) -> Path:
    def once():
      r = self._generate(ids)
      return Sample(r.prefill_s, output=int(r.tokens[0, 0]))

    def memory():
      width = bucket(len(ids), DEFAULT_LENGTH_BUCKETS, what="prompt length")
      mem = self._program([ids], width=width).memory()
      return _memory_record({"prefill": mem}, (mem or {}).get("total"), self.weight_bytes)

    return Path(once, memory, self.jax_peak)

  def _program(self, prompts, **kwargs) -> PrefillProgram:
    return PrefillProgram(self.model, prompts, prefill=self.prefill, split=self.split, **kwargs)

  def text_floor(self, ids: Sequence[int]) -> Path:
    prog = self._program([ids])

    def memory():
      mem = prog.memory()
      return _memory_record({"prefill": mem}, (mem or {}).get("total"), self.weight_bytes)

    return Path(prog.sample, memory, self.jax_peak)

  def parallel_synthesis(self, branches: Branches, latent: Sequence[int]) -> tuple[Path, Path]:
    """(parallel_synthesis, ps_floor) over the same branches and synthesizer prompt."""
    caches = branches.caches

    def once():
      (prefix, lmax), build_s = self.prefix_builder.timed(caches)
      r = self._generate(
        latent,
        prefix=prefix,
        position_offsets=np.asarray(lmax),
        lora=self.lora,
        lora_scale=self.lora_scale,
      )
      return Sample(
        build_s + r.prefill_s,
        parts={"build_prefix": build_s, "prefill": r.prefill_s},
        output=int(r.tokens[0, 0]),
      )

    floor = []  # built on first use, after PS's warm-up compiled the pieces

    def floor_program() -> PrefillProgram:
      if not floor:
        prefix, lmax = jax.block_until_ready(self.prefix_builder(caches))
        width = bucket(len(latent), DEFAULT_LENGTH_BUCKETS, what="prompt length")
        floor.append(
          self._program(
            [latent],
            width=width,
            offsets=np.asarray(lmax),
            prefix=prefix,
            lora=self.lora,
            lora_scale=self.lora_scale,
          )
        )
      return floor[0]

    def ps_memory():
      builder = self.prefix_builder
      build = timing.xla_memory(builder.program, *builder.args(caches))
      prefill = floor_program().memory()
      total = None
      if build and prefill:  # the weights live through the build, the branches through both
        total = max(build["total"] + self.weight_bytes, prefill["total"] + tree_bytes(caches))
      return _memory_record({"build_prefix": build, "prefill": prefill}, total, self.weight_bytes)

    def floor_memory():
      mem = floor_program().memory()
      return _memory_record({"prefill": mem}, (mem or {}).get("total"), self.weight_bytes)

    ps = Path(once, ps_memory, self.jax_peak)
    return ps, Path(lambda: floor_program().sample(), floor_memory, self.jax_peak)

  def torch_text(self, ids: Sequence[int]) -> Path:
    import torch  # pylint: disable=import-outside-toplevel

    tps = self.torch_ps
    x = torch.as_tensor([list(ids)], dtype=torch.long, device=tps.device)

    def once():
      tps.sync()
      start = time.perf_counter()
      with torch.inference_mode():
        out = self.torch_model(input_ids=x, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())  # .item() synchronises the device
      return Sample(time.perf_counter() - start, output=token)

    return Path(once, None, self.torch_peak)

  def torch_ps_path(self, ids: Sequence[int], n: int, latent: Sequence[int]) -> Path:
    tps = self.torch_ps
    kvs = self.torch_branches(ids, n)

    def once():
      tps.sync()
      start = time.perf_counter()
      token = tps.first_token(kvs, latent)
      return Sample(time.perf_counter() - start, output=token)

    return Path(once, None, self.torch_peak)
