"""Orbax checkpoints of the training state and the data-iterator state, with safe resume.

Saves are synchronous and atomic (orbax writes to a temporary directory and renames it), so
a process killed mid-save leaves the previous checkpoints intact. On resume the newest
checkpoint that restores cleanly wins; an unreadable one is skipped with a warning naming
its step and renamed to `<step>.unreadable-<ns>`, so that training can save that step again.

A failed restore leaves no work behind: orbax runs each restore phase on a fresh asyncio loop
(`asyncio_utils.run_sync`) that it closes as soon as the first read fails, while the sibling
reads (tasks awaiting tensorstore futures, `asyncio.to_thread` workers) are still in flight.
Those would later fail on the closed loop ("Event loop is closed", "Task exception was never
retrieved") in whatever code runs next, so restores run under `_drained_event_loops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class Checkpointer:
  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False
      ),
    )

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state, data_state: dict) -> None:
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
      force=True,
    )

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest good checkpoint, or None if there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        with _drained_event_loops():
          restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
          )
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
          "checkpoint at step %d in %s is unreadable (%s: %s); falling back to the previous one",
          step,
          self.directory,
          type(e).__name__,
          str(e)[:200],
        )
        self._move_aside(step)
        continue
      return step, restored["state"], restored["data"]
    return None

  def _move_aside(self, step: int) -> None:
    """Renames an unreadable step (kept for inspection) so that it can be saved anew."""
    if jax.process_index() == 0:
      bad = os.path.join(self.directory, str(step))
      os.rename(bad, f"{bad}.unreadable-{time.time_ns()}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"ps_jax checkpoint {step} moved aside")
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
