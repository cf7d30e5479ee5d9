r"""Train a Parallel-Synthesis adapter (mapper + LoRA), then evaluate it on held-out rows.

  python -m launch.train --config configs/demo.py --workdir workdir/demo

`--config.train.method` is what is trained in --workdir (parallel_synthesis, or text_lora,
lora_only, mapper_only, no_reencode); each method of `--config.train.compare_with` is trained
with the same config in WORKDIR/<method> (e.g. the text_lora baseline). The held-out report
then evaluates `--config.eval.methods` (zero-shot text and pcw need no training) with Wilson
intervals and paired bootstrap tests between every two methods.

Training rows come from `--config.data.sources` (the synthetic suite, jsonl:, tfds:, hf:
sources; see configs/demo.py), tokenized by the grain pipeline (`--config.pipeline.worker_count`
worker processes). Writes metrics.jsonl and loss.png to --workdir.

Resumes automatically from the newest good checkpoint in --workdir, whatever the number of
processes or devices that wrote it. Multi-process (one process per host, all writing to one
workdir on a shared filesystem): --distributed=explicit with --coordinator_address,
--num_processes and --process_id, or --distributed=auto on a cluster that jax detects (TPU
pods, SLURM, Open MPI); see docs/multihost.md. On SIGTERM (a preemption notice) every process
stops after the same step, saves it and exits with status 143; the same command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags
from ps_jax.experiment import (
  build_model,
  build_rows,
  check_eval_methods,
  train_config,
  trained_methods,
  write_run_config,
)

flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the report.", required=True
)
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
  _flags.initialize_distributed()  # first: before anything queries devices
  import jax  # pylint: disable=import-outside-toplevel

  _quiet_orbax()
  from ps_jax import distributed  # pylint: disable=import-outside-toplevel
  from ps_jax.sharding import make_mesh  # pylint: disable=import-outside-toplevel
  from ps_jax.train.loop import train  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  # Validate the config, build the model and the rows before the workdir gets anything.
  cfg = train_config(c)
  methods = trained_methods(c)
  if c.eval.enabled:
    check_eval_methods(c.eval.methods, methods)
  # The parameters are created in their shardings on the training mesh.
  model, tokenizer = build_model(c.model, make_mesh(cfg.mesh), cfg.rules)
  rows = build_rows(c.data)
  train_rows, heldout, row_stats = rows
  logging.info("%d training rows, %d held-out rows", len(train_rows), len(heldout))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results, seconds = {}, {}
  for method in methods:
    workdir = FLAGS.workdir if method == methods[0] else os.path.join(FLAGS.workdir, method)
    if jax.process_index() == 0:  # the run's config, for export and for the record
      write_run_config(c, workdir, method)
    start = time.perf_counter()
    results[method] = train(
      model,
      tokenizer,
      train_rows,
      heldout,
      dataclasses.replace(cfg, method=method),
      workdir,
      row_stats=row_stats,
    )
    seconds[method] = time.perf_counter() - start
    result = results[method]
    if result.preempted:
      print(
        f"{method}: preempted after step {result.last_step} (checkpoint saved in {workdir}); "
        "rerun the same command to resume"
      )
      sys.exit(_flags.PREEMPTED_EXIT_CODE)
    print(
      f"{method}: trained {result.last_step} steps in {seconds[method]:.0f} s; last loss "
      f"{result.history[-1]['loss'] if result.history else float('nan'):.4f}"
    )
  if c.eval.enabled:  # one process evaluates and reports, on one device
    model = distributed.local_replica(model)
  if c.eval.enabled and jax.process_index() == 0:
    _evaluate(c, model, tokenizer, rows, methods, results, seconds)
  # The others wait here: a process that left now would fail jax's shutdown barrier, whose
  # timeout is shorter than an evaluation.
  distributed.barrier("launch.train finished")


def _evaluate(c, model, tokenizer, rows, methods, results, seconds) -> None:
  """Evaluates c.eval.methods on the held-out rows and writes the report to --workdir."""
  from ps_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from ps_jax.train.heldout import evaluate_methods, write_report  # pylint: disable=import-outside-toplevel

  train_rows, heldout, _ = rows

  def scorer(row, text):
    return synthetic.score(row.meta["family"], text, row.answer)

  start = time.perf_counter()
  evaluated = evaluate_methods(
    model,
    tokenizer,
    heldout,
    scorer=scorer,
    methods=c.eval.methods,
    adapter={m: results[m].adapter if m in results else None for m in c.eval.methods},
    max_new_tokens=c.eval.max_new_tokens,
    batch_size=c.eval.batch_size,
    group=lambda r: r.meta["family"],
  )
  eval_seconds = time.perf_counter() - start

  def final_loss(method):
    losses = [r["loss"] for r in results[method].history]
    return losses[-1] if losses else None

  leak = {k: v for k, v in rows.leak.items() if k not in ("by_family", "examples")}
  paths = write_report(
    evaluated,
    FLAGS.workdir,
    name=c.eval.report_name,
    title="Parallel-Synthesis on the synthetic suite (held-out)",
    extra={
      "model": c.model.source,
      "trained_methods": ", ".join(methods),
      "train_steps": results[methods[0]].last_step,
      "train_rows": len(train_rows),
      "heldout_rows": len(heldout),
      "leak_check": f"{'ok' if rows.leak['ok'] else 'LEAK'} ({json.dumps(leak)})",
      **{f"final_train_loss/{m}": final_loss(m) for m in methods},
      **{f"train_wall_s/{m}": round(seconds[m], 1) for m in methods},
      "eval_wall_s": round(eval_seconds, 1),
      "leak": rows.leak,
      "config": json.loads(c.to_json_best_effort()),
    },
  )
  print(open(paths["md"]).read())


if __name__ == "__main__":
  app.run(main)
