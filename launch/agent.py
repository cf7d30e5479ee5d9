r"""Run an agent workflow (workers with tools -> branches -> a judger per method) and report it.

  python -m launch.agent --config configs/agent.py:marble --workdir workdir/agent_marble

Writes WORKDIR/cases/<id>.json per case (skipped when present: rerunning resumes), failures to
WORKDIR/errors.jsonl (retried on rerun), and the report agent.md / agent.json / agent.png.
See configs/agent.py for the presets (marble, tiny, gaia_files, gaia) and the fixed-trajectory
mode.
"""

from __future__ import annotations

import json
import os
import re
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import _flags
from ps_jax.agents.report import machine, summarize, write_json, write_report

flags.DEFINE_string("workdir", None, "Output directory (resumable).", required=True)
config_flags.DEFINE_config_file("config", None, "Agent workflow config file.", lock_config=True)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _select(items, c, key):
  if c.case_ids:
    by_id = {str(key(x)): x for x in items}
    missing = [i for i in c.case_ids if str(i) not in by_id]
    if missing:
      raise ValueError(f"config.case_ids: no case with id {missing}")
    items = [by_id[str(i)] for i in c.case_ids]
  return items if c.limit < 0 else items[: c.limit]


def _run_items(items, key, path_of, step, workdir) -> list[dict]:
  """Runs step(item) for the items without a record; returns the errors (also in errors.jsonl)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  todo = [x for x in items if not os.path.exists(path_of(x))]
  logging.info("%d cases selected, %d to run", len(items), len(todo))
  errors = []
  for item in tqdm(todo, desc="cases", unit="case"):
    try:
      record = step(item)
    except Exception as e:  # pylint: disable=broad-except  # recorded, retried on rerun
      logging.exception("case %s failed", key(item))
      errors.append(dict(id=key(item), error=f"{type(e).__name__}: {e}", time=time.time()))
      with open(os.path.join(workdir, "errors.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(errors[-1]) + "\n")
      continue
    write_json(path_of(item), record)
  return errors


def _stored(source_dir: str, item_id) -> dict:
  path = os.path.join(source_dir, "cases", f"{item_id}.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"fixed_trajectories: no stored record {path}")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _marble(c, model, tokenizer, adapters, workdir, path_of):
  from ps_jax.agents import postgres  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.marble import (  # pylint: disable=import-outside-toplevel
    chance_baseline,
    load_cases,
    runner,
  )

  config = runner.MarbleConfig(
    methods=tuple(c.methods),
    max_steps=c.max_steps,
    judger_max_steps=c.judger_max_steps,
    judger_max_new_tokens=c.judger_max_new_tokens,
    memory_mode=c.memory_mode,
    settle_s=c.settle_s,
    lock_hold_s=None if c.lock_hold_s < 0 else c.lock_hold_s,
  )
  cases = _select(load_cases(), c, lambda x: x.task_id)
  key = lambda x: x.task_id  # noqa: E731
  if c.fixed_trajectories:
    step = lambda case: runner.rescore_case(  # noqa: E731
      _stored(c.fixed_trajectories, case.task_id),
      case,
      model=model,
      tokenizer=tokenizer,
      config=config,
      adapters=adapters,
    )
    errors = _run_items(cases, key, path_of, step, workdir)
  elif any(not os.path.exists(path_of(x)) for x in cases):
    workers = runner.TimedModelPolicy(
      model, tokenizer, max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=c.seed
    )
    with postgres.LocalPostgres() as pg:
      step = lambda case: runner.run_case(  # noqa: E731
        case,
        model=model,
        tokenizer=tokenizer,
        workers=workers,
        pg=pg,
        config=config,
        adapters=adapters,
      )
      errors = _run_items(cases, key, path_of, step, workdir)
  else:
    errors = []
  done = [x for x in cases if os.path.exists(path_of(x))]
  return cases, errors, config.methods, chance_baseline(done), "MARBLE database diagnosis"


def _gaia(c, model, tokenizer, adapters, workdir, path_of):
  from ps_jax.agents import gaia_runner  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.gaia import gaia_files_tasks, load_gaia  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.marble.runner import TimedModelPolicy  # pylint: disable=import-outside-toplevel
  from ps_jax.agents.tools import ReplayBackend, default_registry  # pylint: disable=import-outside-toplevel

  config = gaia_runner.GaiaConfig(
    methods=tuple(c.methods),
    num_workers=c.num_workers,
    max_steps=c.max_steps,
    judger_max_steps=c.judger_max_steps,
    judger_max_new_tokens=c.judger_max_new_tokens,
    memory_mode=c.memory_mode,
  )
  if c.source == "files":
    tasks = gaia_files_tasks(os.path.join(workdir, "files"), c.num_tasks, c.seed)
    title = "gaia-files (offline GAIA-format tasks)"
  elif c.source == "hf":
    if not c.data_dir:
      raise ValueError("configs/agent.py:gaia needs --config.data_dir=DIR (the GAIA dataset root)")
    tasks = [t for t in load_gaia(c.data_dir, c.split, levels=tuple(c.levels)) if t.scorable]
    title = f"GAIA {c.split} (levels {tuple(c.levels)})"
  else:
    raise ValueError(f"config.source={c.source!r}; expected 'files' or 'hf'")
  for t in tasks:
    if not _SAFE_ID.match(t.task_id):
      raise ValueError(f"task_id {t.task_id!r} is not a safe file name")
  tasks = _select(tasks, c, lambda x: x.task_id)
  backend = ReplayBackend.from_jsonl(c.web_replay) if c.web_replay else ReplayBackend()
  registry = default_registry(backend, python=c.python)
  key = lambda x: x.task_id  # noqa: E731
  if c.fixed_trajectories:
    step = lambda task: gaia_runner.rescore_task(  # noqa: E731
      _stored(c.fixed_trajectories, task.task_id),
      task,
      model=model,
      tokenizer=tokenizer,
      registry=registry,
      config=config,
      adapters=adapters,
    )
  else:
    workers = TimedModelPolicy(
      model,
      tokenizer,
      max_new_tokens=c.max_new_tokens,
      temperature=c.temperature,
      top_p=0.95 if c.temperature > 0 else 1.0,
      seed=c.seed,
    )
    step = lambda task: gaia_runner.run_task(  # noqa: E731
      task,
      model=model,
      tokenizer=tokenizer,
      workers=workers,
      registry=registry,
      config=config,
      adapters=adapters,
    )
  errors = _run_items(tasks, key, path_of, step, workdir)
  return tasks, errors, config.methods, None, title


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  import ps_jax as ps  # pylint: disable=import-outside-toplevel
  from ps_jax.experiment import build_model  # pylint: disable=import-outside-toplevel

  c = FLAGS.config
  workdir = FLAGS.workdir
  case_dir = os.path.join(workdir, "cases")
  os.makedirs(case_dir, exist_ok=True)
  model, tokenizer = build_model(c.model)
  adapters = {m: ps.load_adapter(d, model.config) for m, d in c.adapters.items() if d}

  def path_of(item):
    return os.path.join(case_dir, f"{item.task_id}.json")

  run = {"marble": _marble, "gaia": _gaia}.get(c.workflow)
  if run is None:
    raise ValueError(f"config.workflow={c.workflow!r}; expected 'marble' or 'gaia'")
  items, errors, methods, chance, title = run(c, model, tokenizer, adapters, workdir, path_of)
  records = []
  for x in items:
    if os.path.exists(path_of(x)):
      with open(path_of(x), encoding="utf-8") as f:
        records.append(json.load(f))
  summary = summarize(records, methods, chance)
  source = c.model.source + (" (random weights, tiny shape)" if c.model.random_init else "")
  summary.update(
    cases_selected=len(items),
    errors=len(errors),
    model=source,
    machine=machine(),
    config=c.to_dict(),
    fixed_trajectories=c.fixed_trajectories or None,
  )
  write_report(summary, workdir, title)
  print(open(os.path.join(workdir, "agent.md"), encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
