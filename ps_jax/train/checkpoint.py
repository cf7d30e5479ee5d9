"""Orbax checkpoints of the training state and the data-iterator state, with safe resume.

Saves are synchronous and atomic (orbax writes to a temporary directory and renames it), so
a process killed mid-save leaves the previous checkpoints intact. On resume the newest
checkpoint that restores cleanly wins; an unreadable one is skipped with a warning naming
its step and renamed to `<step>.unreadable-<ns>`, so that training can save that step again.
"""

from __future__ import annotations

import os
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
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False))

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state, data_state: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=ocp.args.JsonSave(data_state)),
                      force=True)

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest good checkpoint, or None if there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); falling back to "
                        "the previous one", step, self.directory, type(e).__name__,
                        str(e)[:200])
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


def abstract_like(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
