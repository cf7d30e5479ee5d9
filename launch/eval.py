r"""Evaluate synthesis methods on a benchmark: N workers, then each method, scored per example.

  python -m launch.eval --config configs/eval.py:humaneval --workdir workdir/eval_humaneval

Writes WORKDIR/results.jsonl (one record per example: question, branch texts, each method's
output, score, TTFT, token counts) and summary.md / summary.json. Rerunning the same command
resumes without redoing finished examples.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from launch import _flags

flags.DEFINE_string("workdir", None, "Output directory (resumable).", required=True)
config_flags.DEFINE_config_file("config", None, "Evaluation config file.", lock_config=True)
flags.mark_flags_as_required(["config"])  # a clear usage error, before anything runs
FLAGS = flags.FLAGS


def main(argv):
  del argv
  _flags.initialize_distributed()  # first: before anything queries devices
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.evals import load_eval_dataset  # pylint: disable=import-outside-toplevel
  from ps_jax.evals.runner import EvalConfig, SamplingWorkers, run_eval  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  model, tokenizer = ps.load(c.model, dtype=dtype(c.dtype))
  adapters = {m: ps.load_adapter(d, model.config) for m, d in c.adapters.items() if d}
  examples = load_eval_dataset(
    c.dataset, c.path or None, c.split or None, None if c.limit < 0 else c.limit
  )
  workflow = SamplingWorkers(
    num_branches=c.num_workers,
    max_new_tokens=c.worker_max_new_tokens,
    temperature=c.temperature,
    top_p=c.top_p,
  )
  cfg = EvalConfig(
    methods=tuple(c.methods),
    max_new_tokens=c.synth_max_new_tokens,
    batch_size=c.batch_size,
    seed=c.seed,
    code_timeout_s=c.code_timeout_s,
    sandbox_allow_unsafe=c.sandbox_allow_unsafe,
  )
  summary = run_eval(
    model, tokenizer, examples, cfg, FLAGS.workdir, workflow=workflow, adapters=adapters
  )
  print(open(f"{FLAGS.workdir}/summary.md").read())
  del summary


if __name__ == "__main__":
  app.run(main)
