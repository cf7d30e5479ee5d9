"""ps_jax.distributed.initialize refuses every misconfiguration before it contacts anything.

In-process and cheap: each call here raises before `jax.distributed.initialize` could start a
service or connect (the pytest process must stay single-process). Auto mode without a cluster
is checked in a fresh process (test_multihost.py): this process's backend already exists.
"""

from __future__ import annotations

import jax
import pytest

from ps_jax import distributed

pytestmark = pytest.mark.multihost


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(mode="on"), r"--distributed='on'; expected one of"),
    (dict(mode="explicit"), r"needs --coordinator_address, --num_processes, --process_id"),
    (
      dict(mode="explicit", coordinator_address="127.0.0.1:1234", num_processes=2),
      r"needs --process_id$",
    ),
    (
      dict(mode="explicit", coordinator_address="127.0.0.1", num_processes=2, process_id=0),
      r"--coordinator_address='127.0.0.1'; expected HOST:PORT",
    ),
    (
      dict(mode="explicit", coordinator_address="h:70000", num_processes=2, process_id=0),
      r"port in 1..65535",
    ),
    (
      dict(mode="explicit", coordinator_address="h:1234", num_processes=0, process_id=0),
      r"--num_processes=0 must be >= 1",
    ),
    (
      dict(mode="explicit", coordinator_address="h:1234", num_processes=2, process_id=2),
      r"--process_id=2 must be in \[0, --num_processes=2\)",
    ),
    (dict(mode="off", num_processes=2), r"--num_processes given with --distributed=off"),
    (
      dict(mode="auto", coordinator_address="h:1", process_id=0),
      r"--coordinator_address, --process_id given with --distributed=auto",
    ),
  ],
)
def test_misconfiguration_names_the_flag(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(**kwargs)
  assert not jax.distributed.is_initialized()


def test_off_is_a_no_op_and_barrier_needs_one_process():
  distributed.initialize("off")
  assert not jax.distributed.is_initialized() and jax.process_count() == 1
  distributed.barrier("single process")  # returns at once
