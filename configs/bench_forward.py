r"""Forward throughput of ps_jax beside transformers eager (prefill and decode tok/s).

  python -m launch.bench_forward --config configs/bench_forward.py     # defaults below
  python -m launch.bench_forward --config configs/bench_forward.py --config.bench.repeats=3

Writes docs/benchmarks/forward.{json,md,png}. Optional config argument: the model source,
e.g. `--config configs/bench_forward.py:/path/model.gguf`. Prefill at 512, 2,048 and 8,192
tokens (issue 13's targets; bench_ttft quotes the ratios): on 2 CPU cores the 8,192-token rows
take ~45 s (ps_jax) and ~25 s (transformers) per call, so they get min_repeats runs; the
whole run takes ~8-10 min.
"""

import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, model="smollm2-135m-instruct")
  c = ml_collections.ConfigDict()
  c.model = arg.model  # embedded name, .gguf file or local transformers folder
  c.dtype = "float32"
  c.torch = True  # also measure transformers eager (PyTorch) on the same weights and prompts
  c.torch_attention = "sdpa"  # transformers' attn_implementation: its fastest built-in
  # CPU threads for both frameworks; 0 = every core this process may use. torch gets
  # torch.set_num_threads(n); XLA sizes its pool from the process's CPU affinity, which is
  # narrowed to n cores when n is below that (before JAX starts its backend).
  c.num_threads = 0
  c.out = "docs/benchmarks/forward"  # writes <out>.json, <out>.md, <out>.png (repo-relative)
  c.analysis = True  # add the decode-step breakdown (where a ps_jax decode step's time goes)

  c.bench = ml_collections.ConfigDict()  # -> ps_jax.bench.forward.ForwardBenchConfig
  c.bench.prefill_tokens = (512, 2048, 8192)
  c.bench.prefill_batch = 1
  c.bench.decode_prompt_tokens = 128
  c.bench.decode_new_tokens = 64
  c.bench.decode_batches = (1, 8)
  c.bench.repeats = 5
  c.bench.min_repeats = 3  # rows whose call exceeds path_budget_s / repeats get this many
  c.bench.path_budget_s = 60.0
  c.bench.warmup = 1
  c.bench.seed = 0
  return c
