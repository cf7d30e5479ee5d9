r"""Train a Parallel-Synthesis adapter (mapper + LoRA), then evaluate it on held-out rows.

  python -m launch.train --config configs/demo.py --workdir workdir/demo

Training rows come from `--config.data.sources` (the synthetic suite, jsonl:, tfds:, hf:
sources; see configs/demo.py), tokenized by the grain pipeline (`--config.pipeline.worker_count`
worker processes). Writes metrics.jsonl and loss.png to --workdir.

Resumes automatically from the newest good checkpoint in --workdir. Multi-host: pass
--coordinator_address, --num_processes and --process_id (or rely on the TPU/SLURM
auto-detection of `jax.distributed.initialize`) to run one process per host.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from ps_jax.experiment import build_model, build_rows, train_config

flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the report.", required=True
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of JAX processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs
FLAGS = flags.FLAGS


def _quiet_orbax() -> None:
  """Orbax logs every save step at INFO; keep its warnings, drop the rest."""
  import logging as pylogging  # pylint: disable=import-outside-toplevel

  logging.get_absl_handler().addFilter(
    lambda r: "orbax" not in r.pathname or r.levelno >= pylogging.WARNING
  )


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel

  _quiet_orbax()
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from ps_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from ps_jax.train.heldout import evaluate_methods, write_report  # pylint: disable=import-outside-toplevel
  from ps_jax.train.loop import train  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  # Validate the config, build the model and the rows before the workdir gets anything.
  cfg = train_config(c)
  model, tokenizer = build_model(c.model)
  train_rows, heldout, row_stats = build_rows(c.data)
  logging.info("%d training rows, %d held-out rows", len(train_rows), len(heldout))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if jax.process_index() == 0:  # the run's config, for export and for the record
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=1))
  result = train(model, tokenizer, train_rows, heldout, cfg, FLAGS.workdir, row_stats=row_stats)
  print(
    f"trained {result.last_step} steps; last loss "
    f"{result.history[-1]['loss'] if result.history else float('nan'):.4f}"
  )
  if not c.eval.enabled or jax.process_index() != 0:
    return

  def scorer(row, text):
    return synthetic.score(row.meta["family"], text, row.answer)

  results = evaluate_methods(
    model,
    tokenizer,
    heldout,
    scorer=scorer,
    methods=c.eval.methods,
    adapter=result.adapter,
    max_new_tokens=c.eval.max_new_tokens,
    batch_size=c.eval.batch_size,
    group=lambda r: r.meta["family"],
  )
  losses = [r["loss"] for r in result.history]
  paths = write_report(
    results,
    FLAGS.workdir,
    name=c.eval.report_name,
    title="Parallel-Synthesis on the synthetic suite (held-out)",
    extra={
      "model": c.model.source,
      "train_steps": result.last_step,
      "train_rows": len(train_rows),
      "final_train_loss": losses[-1] if losses else None,
      "config": json.loads(c.to_json_best_effort()),
    },
  )
  print(open(paths["md"]).read())


if __name__ == "__main__":
  app.run(main)
