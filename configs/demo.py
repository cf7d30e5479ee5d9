r"""The main job: train a Parallel-Synthesis adapter for SmolLM2-135M-Instruct on the synthetic
task suite on CPU, and the trained text-synthesis baseline (text_lora: a LoRA of the same rank
on the same rows, steps and optimizer, reading the branches as text), then compare zero-shot
text, pcw, text_lora and parallel_synthesis on held-out rows: the seen families in held-out
phrasings plus two families never trained on (data.eval_families).

  python -m launch.train --config configs/demo.py --workdir workdir/demo

Writes checkpoints, metrics.jsonl, TensorBoard events and the report (demo.md, demo.png,
demo.json: Wilson intervals, the paired bootstrap test between every two methods, the leak
check) to the workdir (the text_lora run in WORKDIR/text_lora); the committed copy lives in
docs/results/. One seed each: the multi-seed comparison with the ablations is
configs/study.py.

Budget (README command 1 stays under 30 minutes on 2 CPU cores): 120 steps per method (the
study, configs/study.py, trains 300) and 16 held-out rows per family (8 families). Measured CPU
time on the project's 2-core Xeon: 3.8 s per parallel_synthesis step, 6.5 s per text_lora step,
at most ~1.3 s per held-out row and method (48 new tokens): ~33 CPU-minutes in all with start-up
and compilation, ~24 minutes of wall time on two idle cores.

Optimizer: AdamW with lr 3e-4, 20 warm-up steps and gradient clipping at 1.0, where the
reference trains with a constant 1e-4 and no clipping: with a few hundred steps on CPU the
reference's rate learns too little (the reference trains for epochs on GPUs); warm-up and
clipping keep the first steps of the higher rate stable. Both trained methods use it.
"""

import ml_collections

from configs import common

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
      eval_per_family=16,
      num_branches=(2, 4),
      difficulty=1,
      # Evaluation-only families (synthetic.UNSEEN_FAMILIES): held-out rows of tasks that no
      # training row comes from.
      eval_families=("schedule_lookup", "consensus_vote"),
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
      # Every synthetic row fits: branches <= 33 tokens, latent prompt + answer <= 87, text
      # prompt + answer <= 212 (a row that does not fit is skipped and counted).
      branch_tokens=48,
      synth_tokens=96,
      target_tokens=16,
      text_tokens=224,  # text_lora's sequence (0 = max_branches * branch_tokens + synth_tokens)
      seed=0,
      worker_count=0,  # grain worker processes that tokenize; 0 = in the training process
      worker_buffer_size=2,
      read_threads=1,
      prefetch_batches=4,
    )
  )
  c.train = ml_collections.ConfigDict(
    dict(
      # What is trained in the workdir: parallel_synthesis | text_lora | lora_only |
      # mapper_only | no_reencode; each of compare_with is trained alike in WORKDIR/<method>.
      method="parallel_synthesis",
      compare_with=("text_lora",),
      num_steps=120,
      eval_every=40,
      eval_batches=4,
    )
  )
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
  # All devices on fsdp; multislice / multi-node: --config.mesh.dcn.data=<slices or nodes>.
  c.mesh = common.mesh_section(data=1, fsdp=-1, tensor=1)
  c.sharding = common.sharding_section("fsdp")  # or tensor / data; rules.<axis> overrides
  c.eval = ml_collections.ConfigDict(
    dict(
      enabled=True,
      methods=("text", "pcw", "text_lora", "parallel_synthesis"),
      # The same for every method, large enough for each (decoding stops at end-of-turn).
      max_new_tokens=48,
      batch_size=8,
      report_name="demo",
    )
  )
  return c
