r"""Distils training rows from the base model's text synthesizer (DESIGN.md 2.8 role (c)).

  python -m launch.distill --config configs/distill.py --workdir workdir/distill \
      --config.input=jsonl:questions.jsonl

Writes WORKDIR/distilled.jsonl (or --config.output) row by row; rerunning the same command
resumes (rows already in the output are skipped). See configs/distill.py for the options.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags
from ps_jax.experiment import build_model, distill_config

flags.DEFINE_string(
  "workdir", None, "Directory for the output (default distilled.jsonl).", required=True
)
config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/distill.py).", lock_config=True
)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  from ps_jax.train import distill as distill_lib  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  cfg = distill_config(c)  # validates the options before the model loads
  output = c.output or os.path.join(FLAGS.workdir, "distilled.jsonl")
  syn = c.synthetic
  inputs, input_stats = distill_lib.load_inputs(
    c.input,
    tfds_data_dir=c.tfds_data_dir or None,
    split=syn.split,
    per_family=syn.per_family,
    seed=syn.seed,
    num_branches=syn.num_branches if isinstance(syn.num_branches, int) else tuple(syn.num_branches),
    difficulty=syn.difficulty,
  )
  logging.info("input %s: %s", c.input, input_stats)
  print(f"input {c.input}: {input_stats}", flush=True)
  model, tokenizer = build_model(c.model)
  settings = {"input": c.input, "model": c.model.to_dict()}
  if c.input.startswith("synthetic"):
    settings["synthetic"] = c.synthetic.to_dict()
  settings = _jsonable(settings)
  stats = distill_lib.distill(
    model, tokenizer, inputs, cfg, output, settings=settings, overwrite=c.overwrite
  )
  print(f"{output}: {stats}")
  need = distill_lib.pipeline_needs(output, tokenizer)
  sizes = " ".join(f"--config.pipeline.{k}={v}" for k, v in need.items())
  print(
    f"train on it (these pipeline sizes keep every row; rows that do not fit are skipped "
    f"as too long): python -m launch.train --config configs/demo.py --workdir W "
    f'--config.data.sources=\'("synthetic", "jsonl:{output}")\' {sizes}'
  )


def _jsonable(obj):
  """ConfigDict dicts as plain JSON values (tuples -> lists), as the settings file stores them."""
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  return obj


if __name__ == "__main__":
  app.run(main)
