"""Checkpointer.restore_latest on a tiny tree: a failed restore leaves no work running.

orbax runs each restore phase on a fresh asyncio loop and closes it when the first read fails;
the sibling reads must not outlive it (issue 10: a leaked task's "Task exception was never
retrieved" was logged during the next test and broke its warning count).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from ps_jax.train.checkpoint import Checkpointer, abstract_like


def _remove(rel):
  def fn(p):
    path = os.path.join(p, rel)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  fn.__name__ = f"remove {rel}"
  return fn


@pytest.fixture
def created_loops(monkeypatch):
  """The asyncio loops created during the test (orbax makes one per restore phase)."""
  loops = []
  new_event_loop = asyncio.new_event_loop

  def record():
    loops.append(new_event_loop())
    return loops[-1]

  monkeypatch.setattr(asyncio, "new_event_loop", record)
  return loops


def _delay_sibling_opens(monkeypatch, dirs) -> list[str]:
  """In each checkpoint folder of `dirs`, every array but the first opens 10 s late, so that its
  read is in flight when the first one fails: without this, whether a read is left over depends
  on thread timing (in some runs none is). Returns the folders of the opens, one per open."""
  opened = []
  real_open = ts.open

  def open_(spec, *args, **kwargs):
    future = real_open(spec, *args, **kwargs)
    text = json.dumps(spec if isinstance(spec, dict) else spec.to_json())
    damaged = [d for d in dirs if d in text]
    opened.extend(damaged)
    if not damaged or opened.count(damaged[0]) == 1:
      return future

    async def late_open():
      await asyncio.sleep(10)
      return await future

    return late_open()

  monkeypatch.setattr(ts, "open", open_)
  return opened


@pytest.mark.parametrize(
  "damage", [_remove("state/d"), _remove("state/manifest.ocdbt")], ids=lambda f: f.__name__
)
def test_failed_restore_leaves_no_work_running(
  tmp_path, damage, created_loops, caplog, monkeypatch
):
  tree = {f"w{i}": jnp.full((4 + i,), i, jnp.float32) for i in range(4)}
  ckpt = Checkpointer(str(tmp_path), every_steps=1)
  for step in (1, 2, 3):
    ckpt.save(step, tree, {"next_index": step})
  ckpt.close()
  for step in (2, 3):
    damage(str(tmp_path / str(step)))
  opened = _delay_sibling_opens(monkeypatch, [str(tmp_path / f"{s}/state/") for s in (2, 3)])
  unraisable = []  # e.g. a tensorstore callback's "Event loop is closed"
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  threads = set(threading.enumerate())
  created_loops.clear()
  new_event_loop = asyncio.new_event_loop

  ckpt = Checkpointer(str(tmp_path), every_steps=1)
  gc.disable()  # a leaked task is only weakly referenced by asyncio: keep it to be seen
  try:
    with caplog.at_level(logging.WARNING):
      step, restored, data_state = ckpt.restore_latest(abstract_like(tree))
    pending = [t for loop in created_loops for t in asyncio.all_tasks(loop)]
    new_threads = [t.name for t in threading.enumerate() if t not in threads]
  finally:
    gc.enable()
  gc.collect()  # logs "Task exception was never retrieved" / "... destroyed but it is pending"

  assert asyncio.new_event_loop is new_event_loop  # the restore's patch is undone
  assert len(opened) == 2 * len(tree), opened  # the reads of the damaged steps were delayed
  assert created_loops and not pending, pending
  assert not new_threads, new_threads
  assert not unraisable, [u.exc_value for u in unraisable]
  asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
  assert not asyncio_errors, asyncio_errors
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 2, warnings  # one per unreadable checkpoint, nothing else
  assert "checkpoint at step 3 " in warnings[0] and "checkpoint at step 2 " in warnings[1]
  assert step == 1 and data_state == {"next_index": 1}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert ckpt.manager.all_steps() == [1]  # the unreadable ones were moved aside
  assert sorted(p.split(".")[0] for p in os.listdir(tmp_path)) == ["1", "2", "3"]
  ckpt.close()


def _restored_data(directory, tree):
  ckpt = Checkpointer(str(directory), every_steps=1)
  try:
    return ckpt.restore_latest(abstract_like(tree))
  finally:
    ckpt.close()


def test_data_state_per_process_and_older_layout(tmp_path):
  """Each process writes data/process_<i>-of-<n>.json (grain's layout); a checkpoint of the
  older layout (orbax JsonSave: data/metadata) still restores; so does one written by 2
  processes whose states agree (a restore on another topology), and one whose states differ
  is refused by name."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from ps_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  tree = {"w": jnp.arange(4.0)}
  ckpt = Checkpointer(str(tmp_path / "new"), every_steps=1)
  ckpt.save(1, tree, {"global_next_index": 8})
  ckpt.close()
  data = tmp_path / "new" / "1" / "data"
  assert (data / "process_0-of-1.json").exists()
  assert _restored_data(tmp_path / "new", tree)[2] == {"global_next_index": 8}

  with ocp.CheckpointManager(str(tmp_path / "old")) as old:
    old.save(
      3,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave({"next_index": 3})
      ),
    )
  step, restored, data_state = _restored_data(tmp_path / "old", tree)
  assert step == 3 and data_state == {"next_index": 3}
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(4.0))

  os.remove(data / "process_0-of-1.json")
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text(json.dumps({"global_next_index": 8}))
  assert _restored_data(tmp_path / "new", tree)[2] == {"global_next_index": 8}
  (data / "process_1-of-2.json").write_text(json.dumps({"global_next_index": 9}))
  handler = ckpt_lib._IteratorStateHandler()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="states differ, so they cannot resume on 1 processes"):
    handler.restore(data)


def test_single_process_sigterm_is_a_preemption_until_close(tmp_path):
  """Without jax.distributed, the training loop's first `reached_preemption` call starts
  watching SIGTERM (recorded instead of ending the process); `close` gives it back."""
  import signal  # pylint: disable=import-outside-toplevel

  before = signal.getsignal(signal.SIGTERM)
  ckpt = Checkpointer(str(tmp_path), every_steps=1)
  assert signal.getsignal(signal.SIGTERM) is before  # a plain save/restore user is untouched
  try:
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2)
  finally:
    ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is before
