r"""A tiny model-and-data training run for tests and smoke checks (seconds on a laptop CPU).

  python -m launch.train --config configs/tiny.py --workdir /tmp/ps_tiny

A 2-layer random model with SmolLM2's tokenizer and vocabulary, two synthetic families.
"""

import ml_collections

from configs import demo


def get_config(arg=None) -> ml_collections.ConfigDict:
  c = demo.get_config(arg)
  c.model.random_init = True
  c.model.random_shape = ml_collections.ConfigDict(
    dict(
      hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
  )
  c.data.families = ("find_fact", "majority_vote")
  c.data.train_per_family = 16
  c.data.eval_per_family = 4
  c.data.eval_families = ()
  c.train.compare_with = ()
  c.eval.methods = ("text", "pcw", "parallel_synthesis")
  c.data.num_branches = (3, 4)
  c.pipeline.batch_size = 2
  c.pipeline.branch_tokens = 32
  c.pipeline.synth_tokens = 96
  c.pipeline.text_tokens = 0
  c.mesh.fsdp = 1  # one device, whatever the host offers (tests fake 8 CPU devices)
  c.train.num_steps = 6
  c.train.eval_every = 3
  c.train.eval_batches = 2
  c.checkpoint.every_steps = 2
  c.optimizer.warmup_steps = 0
  c.adapter.rank = 4
  c.adapter.alpha = 8.0
  c.eval.enabled = False
  c.eval.max_new_tokens = 4
  c.eval.batch_size = 4
  c.eval.report_name = "tiny"
  return c
