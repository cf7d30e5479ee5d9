"""One process of the multi-host data check (started by test_multihost.py, 2 at a time).

  python tests/multihost/data_worker.py OUT_DIR MODE

Joins the run with `ps_jax.distributed.initialize(MODE)` (the test fakes a SLURM job for
"auto"), reads one pass of the training pipeline (`make_dataset`, sharded by grain's
ShardByJaxProcess) over NUM_ROWS numbered rows, assembles each global batch with
`distributed.global_batch`, and writes what it saw to OUT_DIR/process_<i>.json. Also asks
the training loop's layout check about configs/tiny.py's 1-device mesh (the issue's crash:
process 1 had no device for its rows) and about a mesh over all devices.
"""

from __future__ import annotations

import json
import os
import sys

NUM_ROWS = 24
BATCH = 4  # global rows per step


def main(out_dir: str, mode: str) -> None:
  from ps_jax import distributed

  distributed.initialize(mode)  # first: before anything queries devices
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec

  from ps_jax.data.pipeline import PipelineConfig, make_dataset
  from ps_jax.sharding import MeshConfig, batch_sharding, make_mesh
  from ps_jax.train.loop import _check_batch_layout  # pylint: disable=protected-access

  layout_errors = {}
  for name, config in (("one_device", MeshConfig(fsdp=1)), ("all_devices", MeshConfig())):
    m = make_mesh(config)
    try:
      _check_batch_layout(m, batch_sharding(m, 1), BATCH)
      layout_errors[name] = None
    except ValueError as e:
      layout_errors[name] = str(e)

  rows = [{"id": np.int32(i)} for i in range(NUM_ROWS)]
  cfg = PipelineConfig(batch_size=BATCH, repeat=False, seed=3)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  local_ids, global_ids = [], []
  for batch in make_dataset(rows, cfg):  # one pass, this process's share of every batch
    local_ids.append(batch["id"].tolist())
    ids = distributed.global_batch(batch, sharding)["id"]  # [BATCH] over all 4 devices
    assert ids.shape == (BATCH,), ids.shape
    total = int(jax.jit(lambda x: x.sum())(ids))  # a collective across the processes
    gathered = multihost_utils.process_allgather(ids, tiled=True)
    assert total == int(np.sum(gathered)), (total, gathered)
    global_ids.append(gathered.tolist())
  distributed.barrier("data_worker done")
  result = dict(
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
    coordinator=jax._src.distributed.global_state.coordinator_address,  # pylint: disable=protected-access
    layout_errors=layout_errors,
    local_ids=local_ids,
    global_ids=global_ids,
  )
  path = os.path.join(out_dir, f"process_{jax.process_index()}.json")
  with open(path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
