"""Orbax checkpoints of the training state and the data-iterator state, with safe resume.

All orbax calls of the project live here (orbax's API is still moving; one module to follow it).

Saves are asynchronous: `save` returns once the arrays are copied off the devices, the files
are written in the background while training goes on, and `close` waits for the last write.
Each save is atomic (orbax writes to a temporary directory and renames it), so a process killed
mid-save leaves the previous checkpoints intact. On resume the newest checkpoint that restores
cleanly wins; an unreadable one is skipped with a warning naming its step and renamed to
`<step>.unreadable-<ns>`, so that training can save that step again.

Multi-process runs: every process calls every method; all of them write into one directory
(a shared filesystem or a bucket). The state is restored onto the shardings of the abstract
state given to `restore_latest`, i.e. onto the current run's mesh, so a checkpoint saved by 2
processes with 2 devices each resumes on 1 process with 4 devices or 1. Each process saves its
own data-iterator state (`data/process_<i>-of-<n>.json`, grain's layout); a run with another
process count resumes from them when they agree (grain's ElasticIterator state is global).

Preemption: `reached_preemption(step)`, called by every process at every step, turns True at
the same step on all of them once any one got SIGTERM (jax's preemption sync service, via
orbax); a single process without `jax.distributed` watches SIGTERM itself.

A failed restore leaves no work behind: orbax runs each restore phase on a fresh asyncio loop
(`asyncio_utils.run_sync`) that it closes as soon as the first read fails, while the sibling
reads (tasks awaiting tensorstore futures, `asyncio.to_thread` workers) are still in flight.
Those would later fail on the closed loop ("Event loop is closed", "Task exception was never
retrieved") in whatever code runs next, so restores run under `_drained_event_loops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class Checkpointer:
  def __init__(
    self, directory: str, *, every_steps: int, max_to_keep: int = 3, async_save: bool = True
  ):
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save
      ),
    )
    self._sigterm: _SigtermWatch | None = None  # installed by the first reached_preemption

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state, data_state: dict) -> None:
    """Starts saving `state` (jax.Arrays; every leaf sharded on the run's mesh) and this
    process's `data_state` (a JSON-able dict) as `step`; the write finishes in the background."""
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=_IteratorStateSave(dict(data_state))
      ),
      force=True,
    )

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every process stops for a preemption (see the module
    docstring); call it at every step, on every process. A single process without
    jax.distributed handles SIGTERM itself from the first call until `close`."""
    if jax.distributed.is_initialized():
      return self.manager.reached_preemption(step)
    if self._sigterm is None:
      self._sigterm = _SigtermWatch()
    return self._sigterm.received

  def wait(self) -> None:
    """Blocks until the saves started so far are written."""
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest good checkpoint, or None if there is none.

    abstract_state: jax.ShapeDtypeStruct leaves whose shardings say where the restored arrays
    go (any mesh: the saved one does not matter).
    """
    self.manager.wait_until_finished()
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=_IteratorStateRestore()
    )
    found = _restore_newest(
      self.manager, sorted(self.manager.all_steps(), reverse=True), args, self._move_aside
    )
    if found is None:
      return None
    step, restored = found
    return step, restored["state"], restored["data"]

  def _move_aside(self, step: int) -> None:
    """Renames an unreadable step (kept for inspection) so that it can be saved anew."""
    if jax.process_index() == 0:
      bad = os.path.join(self.directory, str(step))
      os.rename(bad, f"{bad}.unreadable-{time.time_ns()}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"ps_jax checkpoint {step} moved aside")
    self.manager.reload()

  def close(self) -> None:
    try:
      self.manager.wait_until_finished()
      self.manager.close()
    finally:
      if self._sigterm is not None:
        self._sigterm.restore()


class _SigtermWatch:
  """Records a SIGTERM instead of dying of it (one process without jax.distributed, whose
  preemption service does this for multi-process runs). Only the main thread can handle
  signals: elsewhere nothing is installed and SIGTERM keeps its default (the process ends)."""

  def __init__(self):
    self.received = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint and stopping after this step")
    self.received = True

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


_PROCESS_FILE = re.compile(r"^process_(\d+)-of-(\d+)\.json$")


class _IteratorStateHandler(ocp.CheckpointHandler):
  """The data-iterator state of every process: `process_<i>-of-<n>.json` (grain's own
  checkpoint layout), written by each process for itself.

  Restore reads this process's file; with another process count (a restore on another
  topology) it reads all saved files, which must agree (a grain ElasticIterator's state is
  the global position, the same on every process). A checkpoint of the older layout (one
  JSON `metadata` file, orbax's JsonSave) restores too.
  """

  def save(self, directory: epath.Path, args: _IteratorStateSave) -> None:
    i, n = jax.process_index(), jax.process_count()
    (directory / f"process_{i}-of-{n}.json").write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: _IteratorStateRestore | None = None) -> dict:
    del args
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own.exists():
      return json.loads(own.read_text())
    saved = {}
    for path in directory.iterdir():
      m = _PROCESS_FILE.match(path.name)
      if m:
        saved[(int(m.group(2)), int(m.group(1)))] = json.loads(path.read_text())
    if not saved:
      legacy = directory / "metadata"
      if legacy.exists():
        return json.loads(legacy.read_text())
      raise FileNotFoundError(f"no data-iterator state (process_*-of-*.json) in {directory}")
    counts = sorted({n for n, _ in saved})
    if len(counts) != 1 or len(saved) != counts[0]:
      raise ValueError(
        f"{directory}: data-iterator states of processes {sorted(saved)} ((count, index)); "
        "expected one file per process of one run"
      )
    states = list(saved.values())
    if any(s != states[0] for s in states):
      raise ValueError(
        f"{directory}: the {counts[0]} saved processes' data-iterator states differ, so they "
        f"cannot resume on {jax.process_count()} processes (only a global iterator state, "
        "e.g. grain's ElasticIterator, moves to another process count)"
      )
    return states[0]


@ocp.args.register_with_handler(_IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class _IteratorStateSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(_IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class _IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


_PATCH_LOCK = threading.Lock()  # one patch of asyncio.new_event_loop at a time


@contextlib.contextmanager
def _drained_event_loops():
  """Loops that this thread creates meanwhile cancel and await their pending tasks, and join
  their executor threads, before they close (what `asyncio.run` does; orbax's `run_sync` only
  closes the loop). orbax offers no hook for its loops, hence the patch of `new_event_loop`."""
  owner = threading.get_ident()
  with _PATCH_LOCK:
    new_event_loop = asyncio.new_event_loop

    def new_draining_event_loop():
      loop = new_event_loop()
      if threading.get_ident() == owner:
        close = loop.close
        loop.close = lambda: _drain_and_close(loop, close)
      return loop

    asyncio.new_event_loop = new_draining_event_loop
    try:
      yield
    finally:
      asyncio.new_event_loop = new_event_loop


def _drain_and_close(loop: asyncio.AbstractEventLoop, close) -> None:
  async def cancel_and_wait():
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
      task.cancel()
    # Also runs the callbacks still queued on the loop, e.g. gather's retrieval of the
    # exception of a read that failed just after the first one.
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_default_executor()

  try:
    if not loop.is_closed() and not loop.is_running():
      loop.run_until_complete(cancel_and_wait())
  finally:
    close()


def abstract_like(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_state(directory: str, abstract_state, step: int | None = None) -> tuple[int, Any]:
  """(step, state) of a training run's checkpoint, read-only (nothing is moved aside): the
  newest one that restores cleanly (an unreadable one is skipped with a warning), or `step`
  (unreadable: an error naming it). abstract_state as in `Checkpointer.restore_latest`."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints (has the run saved one yet?)")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    if step is not None:  # this one or an error naming it
      if step not in steps:
        raise ValueError(f"{directory}: no checkpoint at step {step}; steps: {sorted(steps)}")
      try:
        with _drained_event_loops():
          return step, manager.restore(step, args=args)["state"]
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(
          f"{directory}: checkpoint at step {step} is unreadable "
          f"({type(e).__name__}: {str(e)[:300]})"
        ) from e
    if not steps:
      raise FileNotFoundError(f"{directory}: no checkpoints (has the run saved one yet?)")
    found = _restore_newest(manager, steps, args)
    if found is None:
      raise ValueError(f"{directory}: no checkpoint restores cleanly (tried steps {steps})")
    return found[0], found[1]["state"]
  finally:
    manager.close()


def _restore_newest(manager, steps, args, on_unreadable=lambda step: None):
  """(step, restored) of the first of `steps` that restores cleanly, or None; each unreadable
  one is logged with a warning naming it and handed to `on_unreadable`."""
  for step in steps:
    try:
      with _drained_event_loops():
        return step, manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
        "checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
        step,
        manager.directory,
        type(e).__name__,
        str(e)[:200],
      )
      on_unreadable(step)
  return None


def save_tree(path: str, tree) -> None:
  """Writes a pytree of host arrays (nested dicts) to `path`, replacing what is there."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(path), tree, force=True)


def restore_tree(path: str):
  """The pytree `save_tree` wrote, as host arrays. Orbax keeps the arrays in tensorstore and
  the tree in JSON metadata: reading a file from someone else unpickles nothing."""
  with _drained_event_loops(), ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(path))
