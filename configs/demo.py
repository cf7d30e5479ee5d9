r"""The main job: train a Parallel-Synthesis adapter for SmolLM2-135M-Instruct on the synthetic
task suite on CPU, then compare text / pcw / parallel_synthesis on the held-out split.

  python -m launch.train --config configs/demo.py --workdir workdir/demo

Writes checkpoints, metrics.jsonl, TensorBoard events and the report (demo.md, demo.png,
demo.json) to the workdir; the committed copy lives in docs/results/.
"""

import ml_collections

FAMILIES = (
  "chat_recall",
  "tool_lookup",
  "find_fact",
  "combine_partials",
  "majority_vote",
  "verified_candidate",
)


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      source="smollm2-135m-instruct",
      dtype="float32",
      random_init=False,
      random_shape=ml_collections.ConfigDict(),
    )
  )
  c.data = ml_collections.ConfigDict(
    dict(
      families=FAMILIES,
      train_per_family=400,
      eval_per_family=24,
      num_branches=(2, 4),
      difficulty=1,
      seed=0,
      # Training rows, in order: "synthetic" (the families above), "jsonl:PATH",
      # "tfds:NAME[:SPLIT]", "hf:NAME[:SPLIT]" (hub id or local folder), "hf:NAME:CONFIG:SPLIT",
      # "hf:json:FILES[:SPLIT]"; see ps_jax/data/sources.py. E.g.
      # --config.data.sources='("synthetic", "jsonl:workdir/distill/distilled.jsonl")'
      sources=("synthetic",),
      tfds_data_dir="",  # for tfds: sources; "" = tfds's default (or $TFDS_DATA_DIR)
    )
  )
  c.pipeline = ml_collections.ConfigDict(
    dict(
      batch_size=4,
      max_branches=4,
      branch_tokens=64,
      synth_tokens=128,
      target_tokens=16,
      seed=0,
      worker_count=0,  # grain worker processes that tokenize; 0 = in the training process
      worker_buffer_size=2,
      read_threads=1,
      prefetch_batches=4,
    )
  )
  c.train = ml_collections.ConfigDict(dict(num_steps=300, eval_every=100, eval_batches=6))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, max_to_keep=3))
  c.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=3e-4, weight_decay=0.0, warmup_steps=20, clip_norm=1.0)
  )
  c.adapter = ml_collections.ConfigDict(
    dict(
      rank=16,
      alpha=32.0,
      mapper_hidden_dim=32,
      metadata_features="both",
      per_head_mapper=False,
      seed=0,
    )
  )
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.eval = ml_collections.ConfigDict(
    dict(
      enabled=True,
      methods=("text", "pcw", "parallel_synthesis"),
      max_new_tokens=16,
      batch_size=8,
      report_name="demo",
    )
  )
  return c
