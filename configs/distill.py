r"""Distillation from text synthesis (DESIGN.md 2.8 role (c)): N workers of the frozen base model
(or a row's own contexts) are the branches, the base model's greedy *text* synthesizer's output
is the target. Writes training rows (query, answer, contexts) for `launch.train`.

  python -m launch.distill --config configs/distill.py --workdir workdir/distill \
      --config.input=jsonl:questions.jsonl

`--config.input` is a source string (ps_jax/data/sources.py): `jsonl:PATH` (or a bare path), a
local or hub dataset `hf:NAME[:SPLIT]` (also `hf:NAME:CONFIG:SPLIT`, `hf:json:FILES[:SPLIT]`),
a prepared tfds dataset `tfds:NAME[:SPLIT]` (from `config.tfds_data_dir`), whose records have
a `query` (or `question`), optional `contexts` (or `agent_reference_contexts`) and an optional
`answer`/`gold` (kept as meta.distill.reference_answer); or `synthetic[:family1,family2]` for
the synthetic suite (`config.synthetic` sets split, size, seed). `config.branches`: "workers"
samples `num_branches` workers per query, "contexts" uses the row's contexts, "auto" (default) the
contexts when a row has them and workers otherwise. The output (default WORKDIR/distilled.jsonl,
or `--config.output=...`) is resumable: rerun the same command after an interruption.

Train on it together with the synthetic suite. The pipeline's buckets must hold the distilled
rows (a worker output of up to worker_max_new_tokens tokens, an answer of up to
synth_max_new_tokens + EOS), or launch.train skips them as too long; launch.distill prints the
exact sizes its output needs, e.g.

  python -m launch.train --config configs/demo.py --workdir workdir/demo_distill \
      --config.data.sources='("synthetic", "jsonl:workdir/distill/distilled.jsonl")' \
      --config.pipeline.branch_tokens=256 --config.pipeline.target_tokens=257 \
      --config.pipeline.synth_tokens=384

Config argument "tiny": a 2-layer random model with SmolLM2's tokenizer, 8-token outputs and
the first 8 synthetic rows in worker mode (a smoke run in well under a minute on a CPU):

  python -m launch.distill --config configs/distill.py:tiny --workdir /tmp/ps_distill
"""

import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, preset="default")
  if arg.preset not in ("default", "tiny"):
    raise ValueError(f"config arg preset={arg.preset!r}; expected 'default' or 'tiny'")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      source="smollm2-135m-instruct",
      dtype="float32",
      random_init=False,
      random_shape=ml_collections.ConfigDict(),
    )
  )
  c.input = "synthetic:majority_vote,verified_candidate"  # a source string (see above)
  c.tfds_data_dir = ""  # for a tfds: input; "" = tfds's default (or $TFDS_DATA_DIR)
  c.synthetic = ml_collections.ConfigDict(
    dict(split="train", per_family=100, seed=0, num_branches=(3, 3), difficulty=1)
  )
  c.output = ""  # "" = WORKDIR/distilled.jsonl
  c.branches = "auto"  # "auto" | "workers" | "contexts"
  c.num_branches = 3
  c.worker_max_new_tokens = 256
  c.synth_max_new_tokens = 256
  c.temperature = 0.6  # workers sample; the text synthesizer (teacher) is greedy
  c.top_p = 0.95
  c.seed = 0
  c.batch_size = 4
  c.max_rows = 0  # 0 = all input rows
  c.overwrite = False  # True: delete an existing output and start over
  if arg.preset == "tiny":
    c.model.random_init = True
    c.model.random_shape = ml_collections.ConfigDict(
      dict(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        tie_embeddings=False,
      )
    )  # untied: a tied random model greedily repeats "\n"
    c.input = "synthetic:find_fact,majority_vote"
    c.synthetic.per_family = 4
    c.branches = "workers"
    c.worker_max_new_tokens = 8
    c.synth_max_new_tokens = 8
    c.batch_size = 4
  return c
