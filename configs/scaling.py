r"""The scaling plan: the Parallel-Synthesis training step of a Qwen3-14B-shaped model,
AOT-compiled on fake CPU devices laid out as a v5p-64 slice (32 chips) and as 8 x H100.

  python -m launch.scaling_plan --config configs/scaling.py

Writes docs/scaling.md and docs/scaling.json: about 6 minutes on 2 CPU cores (each compile
takes 15-40 s and under 1 GB of host memory; nothing of the model is materialised).
`--render_only` rewrites the .md from the .json's rows (e.g. after editing the caveats).

Model: Qwen/Qwen3-14B's config.json (40 layers, hidden 5120, 40 q / 8 kv heads of 128, MLP
17408, vocab 151936, rope_theta 1e6, untied embeddings, qk-norm), bf16 weights.
Step (`steps`): global batch 4, the reference's effective batch (DESIGN.md section 2.7), 3
branches (the paper's default number of workers, section 2.9). DESIGN.md gives no training
sequence length; "paper" takes the release's worker budget (4,096 new tokens per worker,
research/agentic.md) as the branch length with a 1,024-token synthesizer sequence and a
256-token loss window; "short" (1,024-token branches, 512 synthesizer tokens) shows what fits.
Layouts: mesh shapes x rules presets (ps_jax.sharding.RULE_PRESETS: fsdp, tensor, data).
"""

import ml_collections

from configs import common

# Peak dense bf16 FLOP/s per chip (vendor figures).
V5P_PEAK = 459e12  # TPU v5p: 459 TFLOP/s bf16 per chip (Cloud TPU v5p docs)
H100_PEAK = 989e12  # H100 SXM: 989 TFLOP/s dense bf16 (without 2:4 sparsity; NVIDIA datasheet)


def _layout(name: str, preset: str, data: int, fsdp: int, tensor: int):
  return ml_collections.ConfigDict(
    dict(name=name, preset=preset, mesh=common.mesh_section(data=data, fsdp=fsdp, tensor=tensor))
  )


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, steps="paper+short")  # e.g. configs/scaling.py:steps=short
  c = ml_collections.ConfigDict()
  c.title = "Qwen3-14B-shaped Parallel-Synthesis training step on v5p-64 and 8 x H100"
  c.model = ml_collections.ConfigDict(
    dict(
      dtype="bfloat16",
      # Qwen/Qwen3-14B config.json.
      shape=ml_collections.ConfigDict(
        dict(
          family="qwen3",
          vocab_size=151936,
          hidden_size=5120,
          intermediate_size=17408,
          num_layers=40,
          num_heads=40,
          num_kv_heads=8,
          head_dim=128,
          rms_norm_eps=1e-6,
          rope_theta=1e6,
          tie_embeddings=False,
          qk_norm=True,
          max_position_embeddings=40960,
        )
      ),
    )
  )
  c.method = "parallel_synthesis"
  all_steps = dict(
    paper=dict(
      batch_size=4, max_branches=3, branch_tokens=4096, synth_tokens=1024, target_tokens=256
    ),
    short=dict(
      batch_size=4, max_branches=3, branch_tokens=1024, synth_tokens=512, target_tokens=128
    ),
  )
  names = [s for s in arg.steps.split("+") if s]
  for s in names:
    if s not in all_steps:
      raise ValueError(f"config arg steps={arg.steps!r}: {s!r} is not one of {sorted(all_steps)}")
  c.steps = ml_collections.ConfigDict({s: all_steps[s] for s in names})
  c.setup_note = (
    "Batch 4 is the reference's effective batch (DESIGN.md 2.7) and 3 branches its default"
    " worker count (2.9); DESIGN.md gives no training sequence length: *paper* takes the"
    " release's worker budget (4,096 tokens per worker) as the branch length, *short* is a"
    " shorter step that shows what fits."
  )
  c.adapter = ml_collections.ConfigDict(
    dict(rank=16, alpha=32.0, mapper_hidden_dim=32, metadata_features="both", per_head_mapper=False)
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=1e-4, weight_decay=0.0, warmup_steps=0, clip_norm=None)
  )
  c.mfu = 0.4  # the stated model FLOPs utilisation of the step-time column
  c.targets = ml_collections.ConfigDict(
    dict(
      v5p_64=dict(
        chips=32,  # v5p-64 counts TensorCores: 32 chips, one JAX device each
        peak_flops=V5P_PEAK,
        peak_note="TPU v5p per chip",
        hbm_gib=95,
        layouts=[
          _layout("fsdp32", "fsdp", 1, 32, 1),
          _layout("fsdp4_tp8", "fsdp", 1, 4, 8),
          _layout("dp4_tp8", "tensor", 4, 1, 8),
        ],
      ),
      h100x8=dict(
        chips=8,
        peak_flops=H100_PEAK,
        peak_note="H100 SXM dense, no sparsity",
        hbm_gib=80,
        layouts=[
          _layout("fsdp4_tp2", "fsdp", 1, 4, 2),
          _layout("tp8", "tensor", 1, 1, 8),
          _layout("dp4_tp2", "tensor", 4, 1, 2),
          # Pure data parallel: one row per GPU, the whole model on each (4 of the 8 GPUs:
          # the batch has 4 rows).
          _layout("dp4", "data", 4, 1, 1),
        ],
      ),
    )
  )
  c.machine = ""  # "" = this host's name and processor as Python reports them
  c.caveats = [
    "Memory comes from XLA:CPU's compile of the SPMD-partitioned step, an estimate of what"
    " the TPU and GPU compilers would allocate: their fusion, layout, rematerialisation and"
    " collective buffers differ (the accelerator compilers can rematerialise against the"
    " device's memory limit, which a CPU compile has no reason to do), so a *temp* above HBM"
    " is a strong warning, not a proof of an out-of-memory error.",
    "The devices are fake CPU devices: no interconnect topology (ICI torus, NVLink, DCN) is"
    " modelled, so the step time counts FLOPs only, not communication or its overlap.",
    "FLOPs are the matmul FLOPs of the partitioned program counted from the compiled HLO"
    " (every dot, layer-scan bodies times their trip counts); cost_analysis() counts each"
    " while body once and is reported in the JSON only. Elementwise work, softmax and norms"
    " are not counted; the analytic count checks the total.",
    "The step is ps_jax's as implemented: dense attention scores (no flash attention in the"
    " training forward) and no rematerialisation of the layer scan, so the synthesizer's"
    " backward keeps every layer's attention probabilities over all branch keys; *temp* grows"
    " with branch length x synthesizer length x layers.",
    "The batch is split only over mesh axes that divide it (4 rows): layouts with more"
    " batch-splitting devices than rows compute the same rows on several devices (see the"
    " batch split column and FLOPs per device).",
    "h100x8's dp4 layout uses 4 of the 8 GPUs (one row each); the others use all 8.",
    "HBM is the nominal capacity per chip (H100 SXM 80 GB, v5p 95 GB) compared as GiB; the"
    " usable share is lower (e.g. XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 in launch/slurm), so a row"
    " within ~10% of it is borderline.",
    "Not modelled: the input pipeline, checkpointing, host memory, the adapter's replicated"
    " gradient all-reduce cost, compile time on the accelerator.",
  ]
  c.out = "docs/scaling"
  return c
