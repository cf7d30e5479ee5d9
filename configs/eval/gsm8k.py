r"""Evaluate text vs cache synthesis on gsm8k.

  python -m launch.eval --config configs/eval/gsm8k.py --workdir workdir/eval_gsm8k

Overrides: --config.path=FILE.jsonl (local data in the public schema), --config.limit=N,
--config.adapter=DIR (a trained adapter), --config.methods='("text","parallel_synthesis")'.
"""

from configs.eval.base import eval_config


def get_config(arg=None):
  del arg
  return eval_config("gsm8k")
