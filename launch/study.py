r"""Run the study: every (training mix, method, seed) trained and evaluated, then one report.

  python -m launch.study --config configs/study.py --workdir workdir/study

Resumable per cell: a rerun skips the finished cells (their result.json exists) and resumes an
interrupted cell from its newest checkpoint; the report (WORKDIR/study.{md,json,png}) is
rewritten from the finished cells at the end of every run (`--report_only`: only that, e.g. for
an interim report while cells still run elsewhere). See configs/study.py and
ps_jax/train/study.py.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags

flags.DEFINE_string("workdir", None, "Directory for the cells and the report.", required=True)
flags.DEFINE_bool("report_only", False, "Write the report from the finished cells; run none.")
config_flags.DEFINE_config_file("config", None, "Study config file.", lock_config=True)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  import logging as pylogging  # pylint: disable=import-outside-toplevel

  from ps_jax.train.study import Preempted, run_study  # pylint: disable=import-outside-toplevel

  logging.get_absl_handler().addFilter(  # orbax logs every save at INFO
    lambda r: "orbax" not in r.pathname or r.levelno >= pylogging.WARNING
  )

  def log(msg: str) -> None:
    logging.info(msg)
    print(msg, flush=True)

  try:
    out = run_study(FLAGS.config, FLAGS.workdir, log=log, report_only=FLAGS.report_only)
  except Preempted as e:
    log(str(e))
    sys.exit(_flags.PREEMPTED_EXIT_CODE)
  log(f"ran {len(out['ran'])} cells, skipped {len(out['skipped'])} finished ones")
  print(open(out["paths"]["md"]).read())


if __name__ == "__main__":
  app.run(main)
