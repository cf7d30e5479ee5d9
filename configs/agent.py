r"""Agent workflows: workers with tools, their branches, a judger per synthesis method, scores.

  python -m launch.agent --config configs/agent.py:marble --workdir workdir/agent_marble
  python -m launch.agent --config configs/agent.py:tiny --workdir /tmp/agent_tiny

Presets:
  marble  the 100 MARBLE database-diagnosis cases on a throwaway local PostgreSQL 15 (needs
          PostgreSQL's server binaries and psycopg2), SmolLM2-135M-Instruct from the embedded
          GGUF, methods text / pcw / parallel_synthesis (untrained adapter unless
          --config.adapters.parallel_synthesis=DIR);
  tiny    a random 2-layer model with SmolLM2's tokenizer on 2 MARBLE cases (tests, smoke runs);
  gaia_files  30 offline GAIA-format tasks generated at run time (attachments in
          WORKDIR/files; gold computed by the generator; ps_jax.agents.gaia), 3 sampling workers
          with search / visit / PythonInterpreter / parse_file (search and visit answer from an
          offline replay store: every call is a counted miss unless --config.web_replay=FILE);
  gaia    the gated GAIA validation split from a local copy: --config.data_dir=DIR (the dataset
          root holding 2023/validation/; see docs/agents_gaia.md), --config.levels='(1,)'.

  python -m launch.agent --config configs/agent.py:gaia_files --workdir workdir/agent_gaia_files
  python -m launch.agent --config configs/agent.py:gaia --workdir workdir/agent_gaia \
    --config.data_dir=PATH/TO/GAIA

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


PRESETS = ("marble", "tiny", "gaia_files", "gaia")


def _gaia(c: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
  c.workflow = "gaia"
  c.source = source  # "files": generated gaia-files tasks; "hf": load_gaia(data_dir, split)
  c.num_tasks = 30  # gaia-files tasks generated
  c.data_dir = ""
  c.split = "validation"
  c.levels = (1, 2, 3)
  c.num_workers = 3  # identical workers (the release's default)
  # Identical prompts: the workers sample so that their branches differ (greedy workers would
  # be copies of one another; the release's GAIA recipe decodes greedily).
  c.temperature = 0.6
  c.python = True  # PythonInterpreter through the contained sandbox (the recipe leaves it off)
  c.web_replay = ""  # JSONL of recorded search/visit responses ("" = none: all misses)
  return c


def get_config(arg=None) -> ml_collections.ConfigDict:
  if arg not in PRESETS:
    raise ValueError(f"configs/agent.py:PRESET, PRESET one of {', '.join(PRESETS)}; got {arg!r}")
  c = _base()
  if arg in ("gaia_files", "gaia"):
    return _gaia(c, "files" if arg == "gaia_files" else "hf")
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
