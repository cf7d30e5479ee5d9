r"""Evaluate text vs cache synthesis on aime2024.

  python -m launch.eval --config configs/eval/aime2024.py --workdir workdir/eval_aime2024

Overrides: --config.path=FILE.jsonl (local data in the public schema), --config.limit=N,
--config.adapter=DIR (a trained adapter), --config.methods='("text","parallel_synthesis")'.
"""

from configs.eval.base import eval_config


def get_config(arg=None):
  del arg
  return eval_config("aime2024")
