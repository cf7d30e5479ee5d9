"""Starts real JAX processes for the multi-host tests: N local processes with D CPU devices each,
gloo collectives between them, one free coordinator port; kills them all when anything fails.

Each child gets its own session (process group), so a kill takes the child's own helpers too;
`Group` kills every child still running when its `with` block ends, whatever happened in it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(num_devices: int, cache_dir: str | None = None, **extra: str) -> dict[str, str]:
  """The environment of one child: CPU only, `num_devices` devices (the 8-device XLA flag of
  tests/conftest.py removed), the repository on the path, an optional compilation cache, and
  no cluster variables of the machine running the tests (auto mode must see only what a test
  sets)."""
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_", "MEGASCALE_"))
    and k not in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "KUBERNETES_SERVICE_HOST")
  }
  env["XLA_FLAGS"] = " ".join(
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  env.update(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(num_devices),
    TOKENIZERS_PARALLELISM="false",
    PYTHONUNBUFFERED="1",
    PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  if cache_dir:
    env.update(
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
  env.update(extra)
  return env


class Group:
  """Child processes started together; `with Group() as g:` kills the survivors on exit."""

  def __init__(self):
    self.procs: list[subprocess.Popen] = []
    self.logs: list[str] = []

  def start(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
    with open(log, "w") as f:
      proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
      )
    self.procs.append(proc)
    self.logs.append(str(log))
    return proc

  def wait(self, timeout: float) -> list[int]:
    """Exit codes of all children. If one fails the others are killed after a short grace
    (they would wait for it until the coordinator times out); on timeout all are killed and
    AssertionError names the logs."""
    deadline = time.monotonic() + timeout
    failed_at = None
    while any(p.poll() is None for p in self.procs):
      now = time.monotonic()
      if failed_at is None and any(p.returncode not in (None, 0, 143) for p in self.procs):
        failed_at = now
      if now > deadline or (failed_at is not None and now > failed_at + 20):
        self.kill()
        if failed_at is None:
          raise AssertionError(f"processes still running after {timeout} s:\n{self.tails()}")
        break
      time.sleep(0.1)
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    for p in self.procs:
      p.wait()

  def output(self, i: int) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def tails(self, chars: int = 3000) -> str:
    return "\n".join(
      f"--- process {i} (exit {p.returncode}): {self.logs[i]}\n{self.output(i)[-chars:]}"
      for i, p in enumerate(self.procs)
    )

  def __enter__(self) -> Group:
    return self

  def __exit__(self, *exc) -> None:
    self.kill()


def python(*args: str) -> list[str]:
  return [sys.executable, *args]
