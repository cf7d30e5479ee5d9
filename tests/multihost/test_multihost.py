"""Real multi-process runs on CPU: 2 processes x 2 devices (gloo) against 1 process x 4 devices.

One set of runs serves every assertion (module-scoped fixtures):

- `runs.preempted`: `python -m launch.train --distributed=explicit` as 2 processes on
  configs/tiny.py with the mesh over all 4 devices, a global batch of 4, checkpoints every 2
  steps and a step limit out of reach; once step 3 is logged, SIGTERM goes to process 1 only.
- `runs.reference`: the same config as 1 process with 4 devices, from scratch to S + 2, where
  S is the step the preempted run stopped after.
- `runs.restored[n]`: copies of the preempted workdir resumed to S + 2 on 1 process with n = 4
  devices and with n = 1.
- `slurm`: tests/multihost/data_worker.py as 2 processes under a faked SLURM job step
  (environment variables only) with --distributed=auto semantics.

The runs share one persistent compilation cache (a fresh folder): the reference and the 1 x 1
restore run side by side, then the 1 x 4 restore loads the reference's program from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import time

import numpy as np
import pytest
from launcher import Group, child_env, free_port, python

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

TOL = 1e-5
PREEMPTED = 143  # launch.train's exit status after a preemption save
TRAIN = (
  "-m",
  "launch.train",
  "--config",
  "configs/tiny.py",
  "--config.mesh.fsdp=-1",  # the mesh spans every process's devices
  "--config.pipeline.batch_size=4",  # one row per device
  "--config.checkpoint.every_steps=2",
  "--config.train.eval_batches=0",  # no evaluation program to compile
)
TIMEOUT = 600


def _records(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f.read().split("\n")[:-1] if line.strip()]


def _train(tmp, runs: dict[str, tuple], num_steps: int, cache: str) -> dict[str, str]:
  """Single-process launch.train runs side by side, {name: (workdir, devices)}; returns
  {name: output}."""
  with Group() as g:
    for name, (workdir, devices) in runs.items():
      g.start(
        python(*TRAIN, f"--config.train.num_steps={num_steps}", "--workdir", str(workdir)),
        child_env(devices, cache),
        tmp / f"{name}.log",
      )
    codes = g.wait(TIMEOUT)
    assert codes == [0] * len(runs), g.tails()
    return {name: g.output(i) for i, name in enumerate(runs)}


@dataclasses.dataclass
class Runs:
  preempted_dir: str
  preempted_out: list[str]
  preempted_codes: list[int]
  stop_step: int
  reference: list[dict]
  restored: dict[int, tuple[list[dict], str]]  # devices -> (records, output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
  tmp = tmp_path_factory.mktemp("multihost")
  cache = str(tmp / "jax_cache")
  workdir = tmp / "preempted"
  port = free_port()
  with Group() as g:
    for i in range(2):
      g.start(
        python(
          *TRAIN,
          "--config.train.num_steps=100000",
          "--workdir",
          str(workdir),
          "--distributed=explicit",
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={i}",
        ),
        child_env(2, cache),
        tmp / f"preempted_{i}.log",
      )
    deadline = time.monotonic() + TIMEOUT
    while not _records(workdir) or _records(workdir)[-1]["step"] < 3:
      if any(p.poll() is not None for p in g.procs) or time.monotonic() > deadline:
        g.kill()
        pytest.fail(f"the 2-process run ended or timed out before step 3:\n{g.tails()}")
      time.sleep(0.05)
    os.kill(g.procs[1].pid, signal.SIGTERM)  # one process gets the preemption notice
    codes = g.wait(120)
    outputs = [g.output(i) for i in range(2)]
  assert codes == [PREEMPTED, PREEMPTED], g.tails()
  stop = _records(workdir)[-1]["step"]

  for devices in (4, 1):
    shutil.copytree(workdir, tmp / f"restored_{devices}")
  # The 1 x 1 restore compiles its own program beside the reference; the 1 x 4 restore then
  # loads the reference's program from the cache.
  out = _train(
    tmp, {"reference": (tmp / "reference", 4), "1x1": (tmp / "restored_1", 1)}, stop + 2, cache
  )
  out.update(_train(tmp, {"1x4": (tmp / "restored_4", 4)}, stop + 2, cache))
  restored = {n: (_records(tmp / f"restored_{n}"), out[f"1x{n}"]) for n in (4, 1)}
  return Runs(str(workdir), outputs, codes, stop, _records(tmp / "reference"), restored)


def test_two_processes_train_like_one_process_with_four_devices(runs):
  for out in runs.preempted_out:
    assert re.search(r"\[Gloo\] Rank \d is connected to 1 peer", out), out[-2000:]
  records = _records(runs.preempted_dir)  # written by process 0 only: one record per step
  assert [r["step"] for r in records] == list(range(1, runs.stop_step + 1))
  ref = runs.reference
  diffs = []
  for r, q in zip(records, ref[: runs.stop_step], strict=True):
    assert r["target_tokens"] == q["target_tokens"], (r, q)
    assert abs(r["loss"] - q["loss"]) <= TOL, (r, q)
    assert abs(r["grad_norm"] - q["grad_norm"]) <= TOL * max(1.0, q["grad_norm"]), (r, q)
    diffs.append(abs(r["loss"] - q["loss"]))
  print(f"\n2x2 vs 1x4, steps 1..{runs.stop_step}: max |loss diff| {max(diffs):.2e}")


def test_sigterm_to_one_process_stops_both_at_one_step_with_a_checkpoint(runs):
  stops = [re.findall(r"preempted after step (\d+)", out) for out in runs.preempted_out]
  assert stops == [[str(runs.stop_step)]] * 2, stops
  assert runs.preempted_codes == [PREEMPTED, PREEMPTED]
  assert runs.stop_step >= 3
  step_dir = os.path.join(runs.preempted_dir, "checkpoints", str(runs.stop_step))
  assert os.path.exists(os.path.join(step_dir, "commit_success.txt")), os.listdir(step_dir)
  data = sorted(os.listdir(os.path.join(step_dir, "data")))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data), data
  states = [
    json.load(open(os.path.join(step_dir, "data", f"process_{i}-of-2.json"))) for i in (0, 1)
  ]
  assert states[0] == states[1] == {"global_next_index": 4 * runs.stop_step}, states
  for out in runs.preempted_out:  # no crash at the exit (e.g. a failed shutdown barrier)
    assert "Traceback" not in out and "Shutdown barrier has failed" not in out, out[-3000:]


@pytest.mark.parametrize("devices", [4, 1], ids=["1x4", "1x1"])
def test_restore_on_another_topology_continues_the_same_losses(runs, devices):
  records, out = runs.restored[devices]
  assert f"resumed from step {runs.stop_step}" in out, out[-3000:]
  stop = runs.stop_step
  assert [r["step"] for r in records] == list(range(1, stop + 3))
  for r, q in zip(records[stop:], runs.reference[stop:], strict=True):
    assert r["step"] == q["step"]
    assert r["target_tokens"] == q["target_tokens"], (r, q)
    assert abs(r["loss"] - q["loss"]) <= TOL, (r, q)


# --distributed=auto under a faked SLURM job step, and the per-process input.

ROWS = 24
BATCH = 4


def _slurm_port() -> tuple[int, int]:
  """(SLURM_JOB_ID, the port jax derives from it) with that port free right now."""
  for _ in range(200):
    job = random.randrange(1, 10**6)
    port = 65535 - 4095 + job % 4096
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return job, port
  raise RuntimeError("no free port in jax's SLURM range")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("slurm")
  job, port = _slurm_port()
  with Group() as g:
    for i in range(2):
      env = child_env(
        2,
        SLURM_JOB_ID=str(job),
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i),
      )
      g.start(
        python("tests/multihost/data_worker.py", str(tmp), "auto"), env, tmp / f"worker_{i}.log"
      )
    codes = g.wait(TIMEOUT)
    assert codes == [0, 0], g.tails()
  results = []
  for i in range(2):
    with open(tmp / f"process_{i}.json") as f:
      results.append(json.load(f))
  return port, results


def test_auto_mode_detects_a_faked_slurm_job(slurm):
  port, results = slurm
  for i, r in enumerate(results):
    assert r["process_index"] == i and r["process_count"] == 2
    assert r["device_count"] == 4 and r["local_device_count"] == 2
    assert r["coordinator"] == f"localhost:{port}"


def test_a_mesh_missing_a_process_is_refused_by_name(slurm):
  """The issue's crash (StopIteration inside make_array_from_process_local_data, one process
  training alone on half the batch): configs/tiny.py's 1-device mesh in a 2-process run."""
  _, results = slurm
  for r in results:
    assert r["layout_errors"]["all_devices"] is None
    error = r["layout_errors"]["one_device"]
    assert error and "(devices of processes [0])" in error, error
    assert "the mesh must span every process's devices" in error, error
    assert f"gives process {r['process_index']} {4 - 4 * r['process_index']} of the 4 rows" in error


def test_each_process_reads_a_disjoint_shard_and_together_all_rows(slurm):
  from ps_jax.data.pipeline import PipelineConfig, make_dataset

  _, results = slurm
  local = [np.array(r["local_ids"]) for r in results]  # [steps, BATCH / 2] per process
  assert local[0].shape == local[1].shape == (ROWS // BATCH, BATCH // 2)
  assert not set(local[0].ravel()) & set(local[1].ravel())
  assert sorted(np.concatenate([x.ravel() for x in local])) == list(range(ROWS))
  # The global batch is the processes' shares in process order, on both processes, and holds
  # the rows of the 1-process pipeline's batch at the same step.
  one = make_dataset(
    [{"id": np.int32(i)} for i in range(ROWS)],
    PipelineConfig(batch_size=BATCH, repeat=False, seed=3),
    process_index=0,
    process_count=1,
  )
  single = [b["id"].tolist() for b in one]
  for r in results:
    for step, global_ids in enumerate(r["global_ids"]):
      assert global_ids == local[0][step].tolist() + local[1][step].tolist()
      assert sorted(global_ids) == sorted(single[step])


def test_auto_mode_without_a_cluster_is_an_error(tmp_path):
  with Group() as g:
    g.start(
      python("-c", "from ps_jax import distributed; distributed.initialize('auto')"),
      child_env(1),
      tmp_path / "auto.log",
    )
    codes = g.wait(120)
    out = g.output(0)
  assert codes[0] != 0 and "--distributed=auto found no cluster" in out, out[-2000:]
