r"""TTFT benchmark: text synthesis vs Parallel-Synthesis (DESIGN.md 2.10), SmolLM2-135M fp32.

  python -m launch.bench_ttft --config configs/bench_ttft.py

writes docs/benchmarks/ttft.{json,md,png}. A tiny smoke run (N in {2, 3}, L in {64, 128},
2 repeats, written under /tmp/ps_jax_bench/) either way:

  python -m launch.bench_ttft --config configs/bench_ttft.py:quick=true
  python -m launch.bench_ttft --config configs/bench_ttft.py --config.quick=True

(`--config.quick=True` sets the quick values of the grid, repeats and output fields that are
not overridden on the same command line.)
Config argument keys: model (embedded name, .gguf file or transformers folder), quick.
Any field can be overridden, e.g. `--config.num_branches="(2,3)" --config.repeats=7`.
"""

import ml_collections

from configs import common

# Fields that quick=True sets (in get_config for the config argument; in the launcher for
# `--config.quick=True`).
QUICK = dict(
  num_branches=(2, 3),
  branch_lengths=(64, 128),
  repeats=2,
  min_repeats=2,
  compile_check_lengths=(40, 50, 60),
  output="/tmp/ps_jax_bench/ttft_quick",
)


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, model="smollm2-135m-instruct", quick=False)
  c = ml_collections.ConfigDict()
  c.model = arg.model  # embedded name, .gguf file or local transformers folder
  c.dtype = "float32"
  c.quick = arg.quick
  c.output = "docs/benchmarks/ttft"  # stem: writes .json, .md, .png (relative: repo root)

  # The grid: N branches of exactly L tokens each.
  c.num_branches = (2, 3, 4, 8)
  c.branch_lengths = (128, 512, 2048)
  # "text": the first L tokens of English text (Python's pydoc topics, tokenized by the
  # model's tokenizer), the same in every branch; "random": random non-special ids.
  c.branch_source = "text"
  c.question = "Which final answer do the agents support? Reply with the answer only."
  c.synth_prompt_tokens = 64  # only without a tokenizer (random-id synthesizer prompt)

  # Timing: `repeats` timed calls per path and cell after `warmup` untimed ones, paths
  # interleaved; where one call takes longer than path_budget_s / repeats, the repeats are
  # reduced to fit the budget (never below min_repeats) and the table says so.
  c.repeats = 5
  c.min_repeats = 2
  c.path_budget_s = 60.0
  c.warmup = 1
  c.exact_lengths = True  # no prompt padding (False: the library's default length buckets)
  c.max_new_tokens = 1  # decode-cache room after the prompt, as synthesize(max_new_tokens)
  # Time budget: the ps_jax text prefill grows ~quadratically (it materialises fp32
  # attention scores over [empty decode cache; prompt]): one 4,196-token prefill took 341 s on
  # the 2-core CPU under load. The full protocol (warm-up + repeats) runs text prompts up to
  # text_max_tokens / torch_max_tokens tokens (0 = no cap); longer ones are compiled ahead and
  # timed once (above_max="single") or not run (above_max="skip"). Prompts beyond the model's
  # context never run.
  c.text_max_tokens = 2200
  c.torch_max_tokens = 0
  c.above_max = "single"
  c.torch_reference = True  # transformers eager text path on the same ids
  c.memory = True

  # Mixed branch lengths inside one length bucket must compile once.
  c.compile_check_lengths = (300, 400, 500)
  c.compile_check_branches = 3
  c.adapter_seed = 0
  c.seed = 0

  if c.quick:
    c.update(QUICK)
  return c
