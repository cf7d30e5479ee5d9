r"""Agent workflows: workers with tools, their branches, a judger per synthesis method, scores.

  python -m launch.agent --config configs/agent.py:marble --workdir workdir/agent_marble
  python -m launch.agent --config configs/agent.py:tiny --workdir /tmp/agent_tiny

Presets:
  marble  the 100 MARBLE database-diagnosis cases on a throwaway local PostgreSQL 15 (needs
          PostgreSQL's server binaries and psycopg2), SmolLM2-135M-Instruct from the embedded
          GGUF, methods text / pcw / parallel_synthesis (untrained adapter unless
          --config.adapters.parallel_synthesis=DIR);
  tiny    a random 2-layer model with SmolLM2's tokenizer on 2 MARBLE cases (tests, smoke runs).

Writes WORKDIR/cases/<id>.json (one per case: every worker's trace and cache ids, each
method's judger trace, score and TTFT; a finished case is skipped on rerun) and the report
agent.md / agent.json / agent.png. --config.fixed_trajectories=DIR re-scores the case records
of an earlier run's workdir (its cases/) without workers or database: the judgers run again on
the re-prefilled traces (e.g. with another adapter).

Overrides: --config.limit=N (first N cases; -1 = all), --config.case_ids='(1,2,3)',
--config.max_new_tokens=N (worker turns), --config.judger_max_new_tokens=N.
"""

import ml_collections

from ps_jax.synthesis import TRAINABLE_METHODS

SMOLLM2 = "smollm2-135m-instruct"


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      source=SMOLLM2, dtype="float32", random_init=False, random_shape=ml_collections.ConfigDict()
    )
  )
  # Per trained method, its adapter dir ("" = untrained: identity mapper, no LoRA).
  c.adapters = ml_collections.ConfigDict({m: "" for m in TRAINABLE_METHODS})
  c.methods = ("text", "pcw", "parallel_synthesis")
  c.max_steps = 5  # tool steps per worker (the release's max_tool_steps)
  c.judger_max_steps = 5
  c.max_new_tokens = 256  # per worker turn (the release uses 4,096: out of reach on 2 cores)
  c.judger_max_new_tokens = 256
  c.temperature = 0.0  # the release's recipes decode greedily
  c.memory_mode = "final_output"
  c.limit = -1
  c.case_ids = ()  # () = all (after limit)
  c.seed = 0
  c.fixed_trajectories = ""  # a previous workdir: re-score its cases/ (no workers, no database)
  return c


def get_config(arg=None) -> ml_collections.ConfigDict:
  if arg not in ("marble", "tiny"):
    raise ValueError(f"configs/agent.py:PRESET, PRESET one of marble, tiny; got {arg!r}")
  c = _base()
  c.workflow = "marble"
  c.settle_s = 2.0  # the release's settle sleep after the triggers
  c.lock_hold_s = -1.0  # -1: LOCK_CONTENTION's lock is held until the case ends (see triggers)
  if arg == "tiny":
    c.model.random_init = True
    c.model.random_shape = ml_collections.ConfigDict(
      dict(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
      )
    )
    c.case_ids = (6, 51)  # VACUUM; VACUUM + FETCH_LARGE_DATA (the quick triggers)
    c.max_steps = 2
    c.judger_max_steps = 1
    c.max_new_tokens = 8
    c.judger_max_new_tokens = 8
    c.settle_s = 0.0
  return c
