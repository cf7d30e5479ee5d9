"""The multi-process flags every entry point shares, and the one call that applies them.

  python -m launch.<name> ... --distributed=explicit --coordinator_address=HOST:PORT \
      --num_processes=N --process_id=I
  python -m launch.<name> ... --distributed=auto   # TPU pods, SLURM, Open MPI, ...

`initialize_distributed()` goes first in each `main`, before anything queries devices; see
ps_jax/distributed.py for the modes and docs/multihost.md for the commands.
"""

from __future__ import annotations

from absl import flags

from ps_jax import distributed

PREEMPTED_EXIT_CODE = 128 + 15  # as if ended by SIGTERM: a scheduler sees an unfinished run

DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "off",
  list(distributed.MODES),
  "Multi-process JAX: off (one process), explicit (the three flags below) or auto (the "
  "cluster as jax detects it: TPU VM/GKE, SLURM, Open MPI, JAX_COORDINATOR_* variables).",
)
COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0 (--distributed=explicit)."
)
NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Number of JAX processes (--distributed=explicit)."
)
PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in [0, num_processes) (--distributed=explicit)."
)


def initialize_distributed() -> None:
  """`ps_jax.distributed.initialize` with this run's flags."""
  distributed.initialize(
    DISTRIBUTED.value, COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value
  )
