"""Two JAX processes on localhost (1 CPU device each, gloo collectives) == one process.

`python -m launch.train --coordinator_address localhost:PORT --num_processes 2 --process_id i`
twice, configs/tiny.py with --config.mesh.fsdp=-1 (the global batch of 2 and the parameters are
sharded over the 2 processes' devices), against the 1-process `reference_run` on 1 device with
the same global batch. Both processes write into one workdir: metrics only from process 0,
one checkpoint that a single process can resume from.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time

from train_helpers import ROOT, cli_command, read_metrics

STEPS = 2
TOL = 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path, reference_run, subprocess_env, run_train_cli):
  _, ref = reference_run
  workdir = tmp_path / "w"
  port = _free_port()
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = []
  try:
    for i in range(2):
      with open(logs[i], "w") as log:
        procs.append(
          subprocess.Popen(
            cli_command(
              workdir,
              STEPS,
              "--config.mesh.fsdp=-1",
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2",
              f"--process_id={i}",
            ),
            cwd=ROOT,
            env=subprocess_env,
            stdout=log,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.monotonic() + 480
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.returncode not in (None, 0) for p in procs):
        break  # one failed: the other would wait for it until the coordinator times out
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outputs = [open(f).read() for f in logs]
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{outputs[i][-4000:]}"
  for out in outputs:
    assert re.search(r"\[Gloo\] Rank \d is connected to 1 peer", out), out[-2000:]
    assert f"trained {STEPS} steps" in out

  records = read_metrics(workdir)  # written by process 0 only: one record per step
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  diffs = [abs(r["loss"] - q["loss"]) for r, q in zip(records, ref[:STEPS], strict=True)]
  for r, q in zip(records, ref[:STEPS], strict=True):
    assert r["target_tokens"] == q["target_tokens"]
    assert abs(r["loss"] - q["loss"]) <= TOL, (r, q)
    assert abs(r["grad_norm"] - q["grad_norm"]) <= TOL * max(1.0, q["grad_norm"]), (r, q)
  state = workdir / "checkpoints" / str(STEPS) / "state"
  assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
  assert (workdir / "checkpoints" / str(STEPS) / "commit_success.txt").exists()
  print(
    f"\n2 processes vs 1: |loss diff| per step {diffs}; "
    f"grad_norm {[r['grad_norm'] for r in records]} vs {[q['grad_norm'] for q in ref[:2]]}"
  )

  # The 2-process checkpoint is complete: one process resumes from it (another mesh) and
  # continues like the reference run.
  out = run_train_cli(workdir, STEPS + 2)
  assert f"resumed from step {STEPS}" in out.stderr
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 3))
  for r, q in zip(records, ref[: STEPS + 2], strict=True):
    assert abs(r["loss"] - q["loss"]) <= TOL, (r, q)
