"""Shared fixtures of the training reliability tests (tests/train).

Cost model (2 CPU cores): one XLA compile of the tiny train step takes ~25 s of CPU, so every
compiled program is shared. A session-scoped persistent compilation cache (a fresh temporary
folder, so a run is always cold) lets later runs of an identical program (a resumed run, a
rerun after a kill) load the executable instead of compiling it again; a cache hit runs the
very same executable that the compile would have produced, so no number below depends on it.

- `cache_dir`: the session's compilation cache; in-process jax uses it for the session.
- `subprocess_env` / `run_train_cli`: `python -m launch.train` (train_helpers.CLI_ARGS) in a
  subprocess on ONE CPU device (the 8-device flag of tests/conftest.py is removed), with the
  same cache.
- `reference_run`: one uninterrupted 8-step run of configs/tiny.py (fp32, 1 device) shared by
  the kill/resume and corrupt-checkpoint tests (multi-process runs: tests/multihost).
- `tokenizer`, `tiny_model`: SmolLM2's tokenizer and a 2-layer random model, built once.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

import jax
import pytest

from train_helpers import REF_STEPS, ROOT, SMOLLM2, TINY_SHAPE, cli_command, read_metrics


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """A fresh persistent compilation cache for this session (in-process and subprocesses)."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=import-outside-toplevel

  path = str(tmp_path_factory.mktemp("jax_cache"))
  old = {
    k: getattr(jax.config, k)
    for k in (
      "jax_compilation_cache_dir",
      "jax_persistent_cache_min_compile_time_secs",
      "jax_persistent_cache_min_entry_size_bytes",
    )
  }
  cc.reset_cache()  # the cache is initialised once; re-initialise it with our folder
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield path
  for k, v in old.items():
    jax.config.update(k, v)
  cc.reset_cache()


@pytest.fixture(scope="session")
def subprocess_env(cache_dir):
  """Environment of a CLI subprocess: 1 CPU device, the session's compilation cache."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join(flags)
  env.update(
    JAX_PLATFORMS="cpu",
    TOKENIZERS_PARALLELISM="false",
    PYTHONUNBUFFERED="1",
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  return env


@pytest.fixture(scope="session")
def run_train_cli(subprocess_env):
  """`run(workdir, num_steps, *extra_flags, timeout=...)` -> CompletedProcess (text output);
  fails the test with the tail of the output if the run fails."""

  def run(workdir, num_steps, *extra, timeout=420, check=True):
    proc = subprocess.run(
      cli_command(workdir, num_steps, *extra),
      cwd=ROOT,
      env=subprocess_env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
    if check and proc.returncode != 0:
      pytest.fail(f"launch.train exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc

  return run


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, run_train_cli):
  """(workdir, records) of an uninterrupted 8-step run; do not modify its workdir (copy it)."""
  workdir = tmp_path_factory.mktemp("reference") / "w"
  run_train_cli(workdir, REF_STEPS)
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, REF_STEPS + 1))
  return str(workdir), records


@pytest.fixture(scope="session")
def tokenizer():
  import ps_jax  # pylint: disable=import-outside-toplevel

  return ps_jax.io.load_tokenizer(SMOLLM2)


@pytest.fixture(scope="session")
def tiny_model():
  """The 2-layer random SmolLM2-shaped model (fp32); train() does not modify it."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import ps_jax  # pylint: disable=import-outside-toplevel

  config = dataclasses.replace(ps_jax.io.load_config(SMOLLM2), **TINY_SHAPE)
  return ps_jax.Transformer(config, rngs=nnx.Rngs(0))
