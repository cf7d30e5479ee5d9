r"""TTFT benchmark: text synthesis vs Parallel-Synthesis (DESIGN.md 2.10, issue 13).

  python -m launch.bench_ttft --config configs/bench_ttft.py

SmolLM2-135M fp32 on the CPU; writes docs/benchmarks/ttft.{json,md,png}. Per (N, L) cell it
times six paths, interleaved (`ps_jax.bench.paths`): ps_jax text, its raw prefill floor,
transformers text, ps_jax Parallel-Synthesis, its prefill floor, and the reference-style PS in
transformers; ratios put PS against the best text path.

Default grid N in {2, 4, 8} x L in {128, 512, 2048}: text prompts of N=4 and N=8 at L=2048
(8.3k and 16.5k tokens) exceed SmolLM2's 8,192 positions and are marked "over context" (their
cache paths still run). Time budget on 2 CPU cores: every path gets 5 timed repeats after one
warm-up call, except where one call takes longer than path_budget_s / repeats (30 s / 5 =
6 s: the text paths of N=4 and 8 at L=512 and of N=2 at L=2048, ~2.2k-4.2k tokens), which get
fewer, at least min_repeats = 2. Measured 2026-12-02 with another job loading the 2 cores
(1-minute load average ~5.5): those three largest cells took 12.4 min (each ps_jax text call
11-30 s, transformers 9-21 s); the six others add an estimated ~8 min (from the quick mode's
per-call times at the same load), so ~21 min in all at that load. Idle, calls are ~2.5x faster
(2,048-token prefill ~4.6 s in ps_jax, ~2.9 s in transformers): ~9 min. On an idle 2-core
AMD EPYC (2026-12-03), where both frameworks' long prefills are slower: 11.0 min.

  python -m launch.bench_ttft --config configs/bench_ttft.py:quick=true

A small smoke run (N in {2, 4}, L in {64, 128}, 2 repeats, written under /tmp/ps_jax_bench/).

  python -m launch.bench_ttft --config configs/bench_ttft.py:gpu

The GPU preset (`launch/gpu_bench.sh` runs it): a random-initialised Qwen3-1.7B-shaped model
(28 layers, hidden 2048, 16 heads / 8 KV heads of 128, MLP 6144, tied embeddings, rope theta
1e6, Qwen3's 151,936-token vocabulary and 40,960 positions; SmolLM2's tokenizer makes the
prompts, whose ids all lie in that vocabulary) in bf16, the same weights in transformers on the
GPU (sdpa attention), cells N=4, L=512 and N=8, L=2048; ps_jax prefills through cuDNN flash
attention (`PrefillConfig(chunk=1024, kv_block=None, implementation="cudnn")`), falling back
to the library's default (XLA, blockwise), with the report saying so, where cuDNN does not
run.

  python -m launch.bench_ttft --config configs/bench_ttft.py:gpu,dry_run=true

The GPU preset's steps on the CPU with a tiny model of the same family (the script's
`--dry-run`).

Config argument keys: preset (cpu | gpu; a bare word sets it), model (embedded name, .gguf
file or transformers folder; with a random model only its tokenizer and vocabulary are used),
quick, dry_run. Any field can be overridden, e.g. `--config.num_branches="(2,4)"
--config.repeats=7`; `--config.quick=True` sets the quick values of the fields not overridden
on the same command line.
"""

import ml_collections

from configs import common

# Fields that quick=True sets (in get_config for the config argument; in the launcher for
# `--config.quick=True`).
QUICK = dict(
  num_branches=(2, 4),
  branch_lengths=(64, 128),
  repeats=2,
  min_repeats=2,
  compile_check_lengths=(40, 50, 60),
  output="/tmp/ps_jax_bench/ttft_quick",
)

# Qwen3-1.7B's architecture (its config.json), for a random-initialised model.
QWEN3_1_7B = dict(
  family="qwen3",
  vocab_size=151936,
  hidden_size=2048,
  intermediate_size=6144,
  num_layers=28,
  num_heads=16,
  num_kv_heads=8,
  head_dim=128,
  rms_norm_eps=1e-6,
  rope_theta=1000000.0,
  tie_embeddings=True,
  qkv_bias=False,
  qk_norm=True,
  max_position_embeddings=40960,
)
# The same family at toy size: the GPU preset's dry run on a CPU.
QWEN3_TINY = dict(QWEN3_1_7B, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16)  # fmt: skip


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(
    arg, preset="cpu", model="smollm2-135m-instruct", quick=False, dry_run=False
  )
  if arg.preset not in ("cpu", "gpu"):
    raise ValueError(f"preset={arg.preset!r}; expected cpu or gpu")
  c = ml_collections.ConfigDict()
  c.preset = arg.preset
  c.model = arg.model  # embedded name, .gguf file or local transformers folder
  c.random_init = False  # True: random weights of `random_shape` (the model's tokenizer)
  c.random_shape = ml_collections.ConfigDict()  # ModelConfig fields replaced in model's config
  c.dtype = "float32"  # both frameworks
  c.torch_device = "cpu"  # "cpu" | "cuda" | "auto"
  c.torch_attention = "sdpa"  # transformers' attn_implementation: its fastest built-in
  c.quick = arg.quick
  c.output = "docs/benchmarks/ttft"  # stem: writes .json, .md, .png (relative: repo root)

  # The grid: N branches of exactly L tokens each (or explicit (N, L) cells).
  c.num_branches = (2, 4, 8)
  c.branch_lengths = (128, 512, 2048)
  c.cells = ()
  # "text": the first L tokens of English text (Python's pydoc topics, tokenized by the
  # model's tokenizer), the same in every branch; "random": random non-special ids.
  c.branch_source = "text"
  c.question = "Which final answer do the agents support? Reply with the answer only."
  c.synth_prompt_tokens = 64  # only without a tokenizer (random-id synthesizer prompt)

  # Timing (`ps_jax.bench.timing`): `repeats` timed calls per path and cell after `warmup`
  # untimed ones, paths interleaved; where one call takes longer than path_budget_s / repeats,
  # the repeats are reduced to fit the budget (never below min_repeats), marked `n=`.
  c.repeats = 5
  c.min_repeats = 2
  c.path_budget_s = 30.0
  c.warmup = 1
  c.torch_reference = True  # the transformers paths (torch_text, torch_ps)
  c.memory = True  # XLA memory plans; peak probes
  # Every ps_jax prefill (ps_jax.model.PrefillConfig): attention "blocks" (XLA, flash-style
  # blocks of prefill_kv_block keys) or one jax.nn.dot_product_attention call per chunk
  # ("xla" | "cudnn"); chunk and key block 0 = the library's defaults.
  c.prefill_attention = "blocks"
  c.prefill_chunk = 0
  c.prefill_kv_block = 0

  # Mixed branch lengths inside one length bucket must compile once.
  c.compile_check_lengths = (400, 450, 500)
  c.compile_check_branches = 3
  c.parity_check = True  # PS vs torch PS first-token logits on the run's device
  # bench_forward's result, quoted for the plain-prefill targets ("" = none).
  c.forward_json = "docs/benchmarks/forward.json"
  c.adapter_seed = 0
  c.seed = 0

  if c.quick:
    c.update(QUICK)
  if arg.preset == "gpu":
    c.random_init = True
    c.random_shape = ml_collections.ConfigDict(QWEN3_TINY if arg.dry_run else QWEN3_1_7B)
    c.dtype = "float32" if arg.dry_run else "bfloat16"
    c.torch_device = "cpu" if arg.dry_run else "cuda"
    c.cells = ((2, 64), (4, 128)) if arg.dry_run else ((4, 512), (8, 2048))
    # GPU timings are short and steady: more warm-up (autotuning), more repeats per budget.
    c.repeats, c.min_repeats, c.warmup, c.path_budget_s = 5, 3, 2, 20.0
    if arg.dry_run:
      c.repeats, c.min_repeats, c.warmup = 2, 1, 1
    c.prefill_attention = "cudnn"  # the dry run on a CPU exercises the fallback
    c.prefill_chunk = 1024
    c.compile_check_lengths = ()  # a minute of compiles on a GPU; the CPU run checks it
    c.forward_json = ""
    c.output = "/tmp/ps_gpu_bench/" + ("ttft_gpu_dry" if arg.dry_run else "ttft_gpu")
  return c
