r"""The study: Parallel-Synthesis against the trained text-synthesis baseline (text_lora), the
ablations (lora_only: no mapper; mapper_only: no LoRA; no_reencode: keys keep their positions)
and the untrained methods (zero-shot text, pcw), on held-out rows of the seen families in
held-out phrasings and of two families never trained on; 3 seeds (each a data seed, a shuffling
seed and an adapter seed), with and without distillation rows in the training mix.

  python -m launch.study --config configs/study.py --workdir workdir/study

Every (mix, method, seed) cell trains with the demo's settings (configs/demo.py: SmolLM2-135M,
batch 4, AdamW 3e-4 with warm-up and clipping; the same for every method) but for 300 steps,
and is evaluated on its seed's held-out rows (24 per family; eval.max_new_tokens=48 for every
method). Rerunning the command skips finished cells and resumes an interrupted one from its
checkpoint; the report (study.md, study.json, study.png: mean and 95% interval over seeds per
method and family, paired bootstrap tests of parallel_synthesis against every other method and
of distillation against none, the significant differences, machine and wall time) is
rewritten at the end of every run from the finished cells. Copy it to docs/results/ to
publish it.

The distillation rows (mix "distill") are made first, once, by the base model's greedy text
synthesizer (the teacher) on synthetic training rows of the seen families (their contexts are
the branches; ps_jax.train.distill, what launch.distill runs) and read through a `jsonl:`
source; `--config.distill.path=FILE` uses rows made by launch.distill instead.

Size: 5 trained methods x 3 seeds x 2 mixes = 30 training cells, 4 mapper variants (metadata
features length / num_agents / none instead of both; per-head coefficients) x 3 seeds on the
base mix = 12, + 3 zero-shot cells, each cell evaluated with "fixed" and "worker" branches.
Measured on this project's 2-core Xeon CPU
(fp32, CPU time per step of this config's pipeline): parallel_synthesis 3.8 s, text_lora 6.5 s
(its 224-token text sequences are backpropagated through every layer), the ablations as
parallel_synthesis; held-out evaluation at most ~1.3 s per row and method (48 new tokens).
On an idle 2-core machine (wall ~ CPU time / 1.4) one cell therefore takes ~19 min
(parallel_synthesis, lora_only, mapper_only, no_reencode: 300 steps + 2 x 192 held-out rows)
or ~27 min (text_lora), a zero-shot cell ~9 min, the distillation rows ~10 min once, and the
whole study ~15 h (~20 h at one core's speed); on one NVIDIA H200 a cell took 21-164 s.
Measured with other jobs on the cores, cells took 27-85 min (docs/results/study_cells/).

Config argument "tiny": a 2-layer random model, 2 methods x 2 seeds x 2 steps, no distillation
(the launcher's smoke test; seconds per cell):

  python -m launch.study --config configs/study.py:tiny --workdir /tmp/ps_study
"""

import ml_collections

from configs import common, demo, tiny

METHODS = ("parallel_synthesis", "text_lora", "lora_only", "mapper_only", "no_reencode")
# The mapper's ablations (DESIGN.md 2.3): parallel_synthesis with other mapper inputs, or one
# set of coefficients per KV head; trained on the base mix only (3 seeds each).
VARIANTS = {
  "ps_features_length": dict(metadata_features="length"),
  "ps_features_num_agents": dict(metadata_features="num_agents"),
  "ps_features_none": dict(metadata_features="none"),
  "ps_per_head_mapper": dict(per_head_mapper=True),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, preset="default")
  if arg.preset not in ("default", "tiny"):
    raise ValueError(f"config arg preset={arg.preset!r}; expected 'default' or 'tiny'")
  c = demo.get_config() if arg.preset == "default" else tiny.get_config()
  # The study trains one method per cell; launch.train's compare_with does not apply.
  c.train.compare_with = ()
  c.train.eval_every = 0  # the held-out loss at the end of each cell only
  c.eval.enabled = True
  if arg.preset == "default":  # longer than the 30-minute demo: 300 steps, 24 rows per family
    c.train.num_steps = 300
    c.data.eval_per_family = 24
  c.study = ml_collections.ConfigDict(
    dict(
      methods=(*METHODS, *VARIANTS),  # trained, one cell per (mix, method, seed)
      variants={
        name: dict(method="parallel_synthesis", adapter=adapter, mixes=("base",))
        for name, adapter in VARIANTS.items()
      },
      zero_shot=("text", "pcw"),  # untrained, one cell per seed
      seeds=(0, 1, 2),
      mixes=("base", "distill"),  # without / with the distillation rows in the training mix
      # Held-out branches from position 0 (as in training), and after their worker prompt
      # (where re-encoding matters: no_reencode equals parallel_synthesis on "fixed" ones).
      branch_layouts=("fixed", "worker"),
      report_name="study",
    )
  )
  c.distill = ml_collections.ConfigDict(
    dict(
      path="",  # a JSONL made by launch.distill; "" = make the rows in WORKDIR/distill/
      input="synthetic",  # every seen family (synthetic.FAMILIES), train split
      synthetic=ml_collections.ConfigDict(
        # A seed of its own: other training instances than the synthetic rows of any seed.
        dict(per_family=100, seed=1000, num_branches=(2, 4), difficulty=1)
      ),
      branches="contexts",  # the rows' contexts are the worker outputs (they fit the buckets)
      num_branches=3,
      worker_max_new_tokens=64,
      synth_max_new_tokens=15,  # + end-of-turn = pipeline.target_tokens (longer are skipped)
      temperature=0.6,
      top_p=0.95,
      seed=0,
      batch_size=8,
      max_rows=0,
    )
  )
  if arg.preset == "tiny":
    c.study.methods = ("parallel_synthesis", "text_lora")
    c.study.zero_shot = ("pcw",)
    c.study.seeds = (0, 1)
    c.study.mixes = ("base",)
    c.study.branch_layouts = ("fixed", "worker")
    c.train.num_steps = 2
    c.train.eval_batches = 1
    c.checkpoint.every_steps = 1
    c.data.eval_per_family = 2
    c.eval.max_new_tokens = 4
    c.distill.input = "synthetic:find_fact,majority_vote"
    c.distill.synthetic.per_family = 2
    c.distill.synth_max_new_tokens = 4
    c.distill.batch_size = 4
  return c
