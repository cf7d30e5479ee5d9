"""Shared defaults of the evaluation configs (one file per dataset imports this)."""

import ml_collections


def eval_config(
  dataset: str, *, synth_max_new_tokens: int = 512, worker_max_new_tokens: int = 512
) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"
  c.adapter = ""  # our orbax adapter, a reference release dir, or "" (identity mapper, no LoRA)
  c.dataset = dataset
  c.path = ""  # local JSONL in the dataset's public schema; "" = the HF hub (or the package)
  c.split = ""  # "" = the dataset's default split
  c.limit = -1  # -1 = all examples
  c.methods = ("text", "pcw", "parallel_synthesis")
  c.num_workers = 3
  c.worker_max_new_tokens = worker_max_new_tokens
  c.temperature = 0.6  # workers sample so that branches differ
  c.top_p = 0.95
  c.synth_max_new_tokens = synth_max_new_tokens  # the synthesizer decodes greedily
  c.batch_size = 4
  c.seed = 0
  c.code_timeout_s = 10.0
  # Generated code runs only in the contained sandbox; True runs it with rlimits only where
  # containment is unavailable (also PS_JAX_ALLOW_UNSAFE_SANDBOX=1). See ps_jax/evals/sandbox.py.
  c.sandbox_allow_unsafe = False
  return c
