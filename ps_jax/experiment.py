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


def build_model(cfg, mesh=None, rules=None):
  """(model, tokenizer) of a config's `model` section: the configured source, or a random model
  of `random_shape` with the source's tokenizer and vocabulary (tiny test and smoke runs).

  With `mesh` (and `rules`, the logical-axis table; None = the fsdp preset) the parameters are
  created in their shardings on the mesh, never whole on one device."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax import sharding  # pylint: disable=import-outside-toplevel

  rules = sharding.DEFAULT_RULES if rules is None else rules
  if not cfg.random_init:
    return ps.load(cfg.source, dtype=dtype(cfg.dtype), mesh=mesh, rules=rules)
  # A random model borrows the source's tokenizer and vocabulary, not its identity.
  config = dataclasses.replace(
    ps.io.load_config(cfg.source), **dict(cfg.random_shape), name_or_path=None, revision=None
  )

  def factory():
    return ps.Transformer(config, dtype=dtype(cfg.dtype), rngs=nnx.Rngs(0))

  model = factory() if mesh is None else sharding.build_on_mesh(factory, mesh, rules)
  return model, ps.io.load_tokenizer(cfg.source)


class Rows(tuple):
  """(train rows, held-out rows, RowStats) as `build_rows` returns them (unpacks as those
  three), with `.leak`: `synthetic.check_no_leak(train, heldout)`."""

  def __new__(cls, train, heldout, stats, leak: dict):
    obj = super().__new__(cls, (train, heldout, stats))
    obj.leak = leak
    return obj

  @property
  def train(self):
    return self[0]

  @property
  def heldout(self):
    return self[1]

  @property
  def stats(self):
    return self[2]


def build_rows(cfg) -> Rows:
  """(train rows, held-out rows, RowStats of the rows the sources skipped while loading), with
  the leak check of the two as `.leak` (also logged; see `Rows`).

  Training rows: the sources of `cfg.sources` in order, each a source string
  (ps_jax.data.sources): "synthetic" (the suite's train split of `cfg.families`;
  "synthetic:f1,f2" for other families), "jsonl:PATH", "tfds:NAME[:SPLIT]" (from
  `cfg.tfds_data_dir`), "hf:NAME[:SPLIT]" and the other hf: forms. Held-out rows: the suite's
  held-out split of `cfg.families` (phrased with the held-out templates), then of
  `cfg.eval_families` (evaluation-only families, synthetic.UNSEEN_FAMILIES; default none),
  whatever the training sources. Every source string is parsed before any is read, so a typo
  fails at once.
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

  eval_families = tuple(cfg.get("eval_families", ()) or ())
  for fam in eval_families:
    if fam not in synthetic.UNSEEN_FAMILIES:
      raise ValueError(
        f"data.eval_families: {fam!r} is not an evaluation-only family; known: "
        f"{sorted(synthetic.UNSEEN_FAMILIES)} (seen families go in data.families)"
      )

  def suite(families, split, per_family, known=synthetic.FAMILIES):
    rows = []
    for fam in families:
      if fam not in known:
        raise ValueError(f"data: unknown synthetic family {fam!r}; known: {sorted(known)}")
      lo = max(nb[0], known[fam].min_branches)
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
  heldout += suite(eval_families, "heldout", cfg.eval_per_family, synthetic.UNSEEN_FAMILIES)
  train = ConcatRows(parts)
  leak = synthetic.check_no_leak(train, heldout)
  log = logging.info if leak["ok"] else logging.warning
  log(
    "leak check: %s (%d held-out rows, %d of their pairs and %d of their answer branches in the "
    "training rows; duplicates %s)",
    "ok" if leak["ok"] else "LEAK",
    leak["heldout_rows"],
    leak["pairs_in_train"],
    leak["answer_branches_in_train"],
    leak["duplicate_rows"],
  )
  return Rows(train, heldout, stats, leak)


def train_config(c):
  """The TrainConfig of a training config (sections train, checkpoint, pipeline, optimizer,
  adapter, mesh, sharding); `train.method` (default parallel_synthesis) is what is trained."""
  from ps_jax.data.pipeline import PipelineConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.sharding import (  # pylint: disable=import-outside-toplevel
    MeshConfig,
    rules_from_config,
  )
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
    mesh=MeshConfig.from_config(c.mesh),
    rules=rules_from_config(c.get("sharding")),
    method=c.train.get("method", "parallel_synthesis"),
  )


def trained_methods(c) -> tuple[str, ...]:
  """The methods a training config trains: `train.method` (in the workdir), then those of
  `train.compare_with` (each in WORKDIR/<method>), without repeats."""
  from ps_jax.synthesis import METHOD_TABLE  # pylint: disable=import-outside-toplevel

  compare = c.train.get("compare_with", ()) or ()
  methods = tuple(dict.fromkeys((c.train.get("method", "parallel_synthesis"), *compare)))
  for m in methods:
    if m not in METHOD_TABLE or not METHOD_TABLE[m].trainable:
      trainable = [k for k, s in METHOD_TABLE.items() if s.trainable]
      raise ValueError(f"train.method / train.compare_with: {m!r} is not one of {trainable}")
  return methods


def check_eval_methods(methods, trained) -> None:
  """Every evaluated method that needs a trained adapter must be among the trained ones (a
  missing adapter would silently evaluate an identity adapter under the method's name)."""
  from ps_jax.synthesis import METHOD_TABLE  # pylint: disable=import-outside-toplevel

  for m in methods:
    if m not in METHOD_TABLE:
      raise ValueError(f"eval.methods: unknown method {m!r}; expected one of {list(METHOD_TABLE)}")
    if METHOD_TABLE[m].trainable and m not in trained:
      raise ValueError(
        f"eval.methods has {m!r}, which needs a trained adapter, but the config trains only "
        f"{list(trained)}: add it to train.compare_with (or set train.method) or drop it"
      )


def write_run_config(c, workdir: str, method: str | None = None) -> str:
  """Writes WORKDIR/config.json, the run's config (what launch.export rebuilds the adapter
  from), with `train.method` set to `method` when given (one of several trained methods)."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  d = json.loads(c.to_json_best_effort())
  if method is not None:
    d["train"] = {**d.get("train", {}), "method": method, "compare_with": []}
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    json.dump(d, f, indent=1)
  return path


def distill_config(c):
  """The DistillConfig of a distillation config section (configs/distill.py, study.distill)."""
  from ps_jax.train.distill import DistillConfig  # pylint: disable=import-outside-toplevel

  return DistillConfig(
    branches=c.branches,
    num_branches=c.num_branches,
    worker_max_new_tokens=c.worker_max_new_tokens,
    synth_max_new_tokens=c.synth_max_new_tokens,
    temperature=c.temperature,
    top_p=c.top_p,
    seed=c.seed,
    batch_size=c.batch_size,
    max_rows=c.max_rows,
  )
