"""From an experiment config's sections to library objects.

The launch scripts and the notebooks share these, so a notebook needs only the installed
package: `build_model(c.model)`, `build_rows(c.data)`, `train_config(c)`, `dtype(name)`.
"""

from __future__ import annotations

import dataclasses

from absl import logging

# Config-facing dtype names -> numpy/JAX dtype names.
DTYPES = {
  "float32": "float32",
  "fp32": "float32",
  "bfloat16": "bfloat16",
  "bf16": "bfloat16",
  "float16": "float16",
  "fp16": "float16",
}


def dtype(name: str):
  """The jnp dtype for a config's dtype name ("float32", "bfloat16", ...)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  key = str(name).lower()
  if key not in DTYPES:
    raise ValueError(f"config dtype={name!r} is not one of {sorted(DTYPES)}")
  return jnp.dtype(DTYPES[key])


def build_model(cfg):
  """(model, tokenizer) of a config's `model` section: the configured source, or a random model
  of `random_shape` with the source's tokenizer and vocabulary (tiny test and smoke runs)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import ps_jax as ps  # pylint: disable=import-outside-toplevel

  if not cfg.random_init:
    return ps.load(cfg.source, dtype=dtype(cfg.dtype))
  config = dataclasses.replace(ps.io.load_config(cfg.source), **dict(cfg.random_shape))
  return (
    ps.Transformer(config, dtype=dtype(cfg.dtype), rngs=nnx.Rngs(0)),
    ps.io.load_tokenizer(cfg.source),
  )


def build_rows(cfg):
  """(train rows, held-out rows, RowStats of rows the JSONL sources skipped) from the
  synthetic suite plus any extra JSONL row files."""
  from ps_jax.data import JsonlSource, RowStats, synthetic  # pylint: disable=import-outside-toplevel

  nb = tuple(cfg.num_branches)
  train, heldout = [], []
  for fam in cfg.families:
    lo = max(nb[0], synthetic.FAMILIES[fam].min_branches)
    train += synthetic.generate(
      fam, "train", cfg.train_per_family, cfg.seed, (lo, nb[1]), cfg.difficulty
    )
    heldout += synthetic.generate(
      fam, "heldout", cfg.eval_per_family, cfg.seed, (lo, nb[1]), cfg.difficulty
    )
  stats = RowStats()
  for path in cfg.extra_jsonl:
    source = JsonlSource(path)
    train += [source[i] for i in range(len(source))]
    logging.info("%s: %s", path, source.stats)
    stats.skipped.update(source.stats.skipped)
  return train, heldout, stats


def train_config(c):
  """The TrainConfig of a training config (sections train, checkpoint, pipeline, optimizer,
  adapter, mesh)."""
  from ps_jax.data.pipeline import PipelineConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.sharding import MeshConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.train.loop import AdapterConfig, TrainConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import OptimizerConfig  # pylint: disable=import-outside-toplevel

  return TrainConfig(
    num_steps=c.train.num_steps,
    checkpoint_every=c.checkpoint.every_steps,
    eval_every=c.train.eval_every,
    eval_batches=c.train.eval_batches,
    max_checkpoints=c.checkpoint.max_to_keep,
    pipeline=PipelineConfig(**c.pipeline),
    optimizer=OptimizerConfig(**c.optimizer),
    adapter=AdapterConfig(**c.adapter),
    mesh=MeshConfig(**c.mesh),
  )
