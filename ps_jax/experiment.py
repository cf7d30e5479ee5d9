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
  # A random model borrows the source's tokenizer and vocabulary, not its identity.
  config = dataclasses.replace(
    ps.io.load_config(cfg.source), **dict(cfg.random_shape), name_or_path=None, revision=None
  )
  return (
    ps.Transformer(config, dtype=dtype(cfg.dtype), rngs=nnx.Rngs(0)),
    ps.io.load_tokenizer(cfg.source),
  )


def build_rows(cfg):
  """(train rows, held-out rows, RowStats of the rows the sources skipped while loading).

  Training rows: the sources of `cfg.sources` in order, each a source string
  (ps_jax.data.sources): "synthetic" (the suite's train split of `cfg.families`;
  "synthetic:f1,f2" for other families), "jsonl:PATH", "tfds:NAME[:SPLIT]" (from
  `cfg.tfds_data_dir`), "hf:NAME[:SPLIT]" and the other hf: forms. Held-out rows: the suite's
  held-out split of `cfg.families`, whatever the training sources. Every source string is
  parsed before any is read, so a typo fails at once.
  """
  from ps_jax.data import (  # pylint: disable=import-outside-toplevel
    ConcatRows,
    RowStats,
    open_source,
    parse_source,
    synthetic,
  )

  sources = (cfg.sources,) if isinstance(cfg.sources, str) else tuple(cfg.sources)
  if not sources:
    raise ValueError("data.sources is empty; e.g. ('synthetic',) or ('jsonl:rows.jsonl',)")
  specs = [parse_source(s, field="data.sources") for s in sources]
  nb = tuple(cfg.num_branches)

  def suite(families, split, per_family):
    rows = []
    for fam in families:
      if fam not in synthetic.FAMILIES:
        raise ValueError(
          f"data: unknown synthetic family {fam!r}; known: {sorted(synthetic.FAMILIES)}"
        )
      lo = max(nb[0], synthetic.FAMILIES[fam].min_branches)
      rows += synthetic.generate(fam, split, per_family, cfg.seed, (lo, nb[1]), cfg.difficulty)
    return rows

  parts, stats = [], RowStats()
  for spec in specs:
    if spec.kind == "synthetic":
      parts.append(suite(spec.families or cfg.families, "train", cfg.train_per_family))
      continue
    source = open_source(spec, field="data.sources", tfds_data_dir=cfg.tfds_data_dir or None)
    logging.info("%s: %s", spec.text, source.stats)
    stats.skipped.update(source.stats.skipped)
    parts.append(source)
  heldout = suite(cfg.families, "heldout", cfg.eval_per_family)
  return ConcatRows(parts), heldout, stats


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
