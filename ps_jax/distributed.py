"""One `jax.distributed` start-up for every entry point, global batches, named barriers.

Every `launch/` script calls `initialize` first, before anything asks JAX for devices: once a
backend exists, JAX can no longer join a multi-process run. Three modes:

- "off": one process (the default); `--coordinator_address` and friends must not be given.
- "explicit": `--coordinator_address host:port`, `--num_processes N`, `--process_id I`, all
  three required; used for several processes on one machine (docs/multihost.md) and for
  clusters that jax does not detect.
- "auto": jax's own cluster detection (`jax.distributed.initialize()` without arguments): TPU
  VMs and GKE TPU pods, SLURM (`srun`), Open MPI (`mpirun`), Kubernetes with `jax[k8s]`, or
  the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables. Nothing detected
  is an error, not a silent single-process run.

Misconfiguration raises an error naming the flag; nothing is retried or swallowed.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

MODES = ("auto", "explicit", "off")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def initialize(
  mode: str,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  initialization_timeout: int = 300,
) -> None:
  """Joins this process to a multi-process JAX run (see the module docstring for `mode`)."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; expected one of {MODES}")
  given = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  if mode != "explicit":
    extra = [name for name, value in given.items() if value is not None]
    if extra:
      raise ValueError(
        f"{', '.join(extra)} given with --distributed={mode}; these flags belong to "
        "--distributed=explicit"
      )
  if mode == "off":
    return
  if jax.distributed.is_initialized():
    raise RuntimeError("jax.distributed is already initialized; call initialize once")
  if mode == "explicit":
    missing = [name for name, value in given.items() if value is None]
    if missing:
      raise ValueError(f"--distributed=explicit needs {', '.join(missing)}")
    m = _ADDRESS.match(coordinator_address)
    if not m or not 0 < int(m.group(2)) < 65536:
      raise ValueError(
        f"--coordinator_address={coordinator_address!r}; expected HOST:PORT with a port in "
        "1..65535 (e.g. 127.0.0.1:12355)"
      )
    if num_processes < 1:
      raise ValueError(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      initialization_timeout=initialization_timeout,
    )
    return
  try:
    jax.distributed.initialize(initialization_timeout=initialization_timeout)
  except ValueError as e:
    if "coordinator_address should be defined" not in str(e):
      raise
    raise ValueError(
      "--distributed=auto found no cluster (TPU VM or GKE, SLURM, Open MPI, Kubernetes with "
      "jax[k8s], JAX_COORDINATOR_ADDRESS); run with --distributed=explicit and "
      "--coordinator_address, --num_processes, --process_id, or --distributed=off"
    ) from e


def global_batch(local_batch: Any, sharding: jax.sharding.Sharding) -> Any:
  """The global jax.Arrays of a pytree of this process's rows [B_local, ...].

  Every process passes its own rows; the global batch is their concatenation in process
  order, B = sum of B_local, laid out by `sharding` (a spec shorter than a leaf's rank leaves
  the trailing axes replicated). `jax.device_put` cannot do this: it expects the same global
  value on every process.
  """
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def local_replica(module):
  """A copy of `module` (an nnx.Module whose arrays may span every process's devices) whole on
  this process's first device, for work one process does alone (the final evaluation). A
  collective: every process must call it. A module already whole on one device is returned
  as is."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  graphdef, state = nnx.split(module)
  leaves = jax.tree.leaves(state)
  if all(len(x.sharding.device_set) == 1 for x in leaves if isinstance(x, jax.Array)):
    return module
  host = jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), state)
  return nnx.merge(graphdef, jax.device_put(host, jax.local_devices()[0]))


def barrier(name: str) -> None:
  """Blocks until every process reached the barrier `name` (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
