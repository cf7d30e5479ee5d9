"""The training loop: data, jitted sharded step, metrics, periodic evaluation, checkpoints.

Writes to the workdir: checkpoints/, metrics.jsonl (one record per step), tensorboard/ and
loss.png (the training loss per step and the held-out loss where evaluated; redrawn on each
evaluation and at the end), the last three from process 0 only.

Multi-process (ps_jax.distributed): every process runs `train` with the same arguments. The
mesh must hold devices of every process; each process reads its share of every global batch
(the grain pipeline shards by process) and `distributed.global_batch` joins the shares into
one jax.Array on the mesh. A preemption (SIGTERM to any process) stops all of them after the
same step, with a checkpoint of it (`TrainResult.preempted`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Sequence

import jax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ps_jax import distributed
from ps_jax.adapter import Adapter
from ps_jax.data.pipeline import (
  PipelineConfig,
  TokenizeRow,
  make_dataset,
  resume_state,
  select_rows,
)
from ps_jax.data.rows import Row, RowStats
from ps_jax.model import Transformer
from ps_jax.sharding import (
  DEFAULT_RULES,
  MeshConfig,
  Rules,
  batch_sharding,
  make_mesh,
  state_shardings,
)
from ps_jax.synthesis import METHOD_TABLE, TRAINABLE_METHODS
from ps_jax.train.checkpoint import Checkpointer, abstract_like
from ps_jax.train.step import (
  OptimizerConfig,
  eval_step,
  init_state,
  make_optimizer,
  split_adapter,
  train_step,
)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  rank: int = 16
  alpha: float = 32.0
  mapper_hidden_dim: int = 32
  metadata_features: str = "both"
  per_head_mapper: bool = False
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """`method` is what is trained (synthesis.METHOD_TABLE): parallel_synthesis (mapper + LoRA),
  the ablations lora_only, mapper_only and no_reencode, or text_lora (a LoRA on the text
  layout: the trained text-synthesis baseline). Everything else is shared, so methods trained
  with one config see the same rows in the same order with the same optimizer and steps."""

  num_steps: int
  checkpoint_every: int
  eval_every: int = 0  # 0 = only at the end
  eval_batches: int = 4
  pipeline: PipelineConfig = PipelineConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  adapter: AdapterConfig = AdapterConfig()
  mesh: MeshConfig = MeshConfig()
  rules: Rules = DEFAULT_RULES  # logical axis -> mesh axes (sharding.rules_from_config)
  max_checkpoints: int = 3
  method: str = "parallel_synthesis"

  def __post_init__(self):
    if self.method not in TRAINABLE_METHODS:
      raise ValueError(
        f"train.method={self.method!r}; expected one of {TRAINABLE_METHODS} (pcw and text "
        "are not trained)"
      )

  @property
  def layout(self) -> str:
    """The pipeline layout of `method`: "text" or "cache"."""
    return METHOD_TABLE[self.method].reads


def make_adapter(model_config, cfg: AdapterConfig, method: str = "parallel_synthesis") -> Adapter:
  """A fresh adapter with the parts `method` trains (mapper and/or LoRA). The parts are drawn as
  in the full adapter (mapper first), so every method with one seed starts from the same LoRA."""
  spec = METHOD_TABLE[method]
  full = Adapter.create(model_config, **dataclasses.asdict(cfg))
  return Adapter(
    full.model_shape,
    base_model=full.base_model,
    mapper=full.mapper if spec.mapper else None,
    lora=full.lora if spec.lora else None,
  )


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class TrainResult:
  adapter: Adapter
  last_step: int
  history: list[dict]  # the metrics.jsonl records of this run (resumed steps included)
  preempted: bool = False  # stopped at `last_step` (checkpointed) before cfg.num_steps


def _read_metrics(path: str, up_to_step: int) -> list[dict]:
  """Records with step <= up_to_step (steps after a checkpoint are redone on resume)."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill
      if rec.get("step", math.inf) <= up_to_step:
        records.append(rec)
  return records


def train(
  model: Transformer,
  tokenizer,
  train_rows: Sequence[Row],
  eval_rows: Sequence[Row],
  cfg: TrainConfig,
  workdir: str,
  *,
  row_stats: RowStats | None = None,
) -> TrainResult:
  """Trains the adapter of `cfg.method` (e.g. mapper + LoRA) on `train_rows`; resumes from
  `workdir` if possible.

  row_stats: the loader's counts of rows it already skipped (added to the metrics' counts).
  """
  os.makedirs(workdir, exist_ok=True)
  pcount, pindex = jax.process_count(), jax.process_index()
  row_stats = copy.deepcopy(row_stats) if row_stats is not None else None
  tokenize = TokenizeRow(tokenizer, cfg.pipeline, layout=cfg.layout)
  train_rows, train_stats = select_rows(
    train_rows, tokenize, stats=row_stats, worker_count=cfg.pipeline.worker_count
  )
  # Shuffled (by the fixed seed) so that the first eval_batches mix all row sources; read in
  # this process (a few batches: starting worker processes would cost more than they save).
  eval_cfg = dataclasses.replace(cfg.pipeline, repeat=False, worker_count=0)
  eval_rows, eval_stats = select_rows(eval_rows, tokenize)
  logging.info("train rows: %s; eval rows: %s", train_stats, eval_stats)

  mesh = make_mesh(cfg.mesh)
  # [B, ...]: rows over the batch axes, the other axes replicated.
  batch_in = batch_sharding(mesh, 1, cfg.rules)
  _check_batch_layout(mesh, batch_in, cfg.pipeline.batch_size)
  model_graphdef, model_params = nnx.split(model)
  model_params = jax.device_put(model_params, state_shardings(model_params, mesh, cfg.rules))
  adapter = make_adapter(model.config, cfg.adapter, cfg.method)
  adapter_graphdef, _, adapter_rest = split_adapter(adapter)
  optimizer = make_optimizer(cfg.optimizer)
  replicated = NamedSharding(mesh, PartitionSpec())
  # The optimizer state is made on the mesh (a leaf left on one device could not be saved by
  # several processes).
  state = init_state(adapter, optimizer, sharding=replicated)

  statics = dict(
    model_graphdef=model_graphdef,
    adapter_graphdef=adapter_graphdef,
    adapter_rest=adapter_rest,
    target_tokens=cfg.pipeline.target_tokens,
    method=cfg.method,
  )
  step_fn = jax.jit(
    functools.partial(train_step, optimizer=optimizer, **statics),
    donate_argnums=0,
    out_shardings=replicated,
  )
  eval_fn = jax.jit(functools.partial(eval_step, **statics), out_shardings=replicated)

  data = make_dataset(
    train_rows, cfg.pipeline, transform=tokenize, process_index=pindex, process_count=pcount
  )
  iterator = iter(data)
  ckpt = Checkpointer(
    os.path.join(workdir, "checkpoints"),
    every_steps=cfg.checkpoint_every,
    max_to_keep=cfg.max_checkpoints,
  )
  start_step = 0
  try:
    restored = ckpt.restore_latest(abstract_like(state))
  except BaseException:
    ckpt.close()  # also gives SIGTERM back (a single process watches it while training)
    raise
  if restored is not None:
    start_step, state, data_state = restored
    state = jax.device_put(state, replicated)
    iterator.set_state(resume_state(data_state, cfg.pipeline))
    logging.info("resumed from step %d", start_step)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_metrics(metrics_path, start_step)
  if pindex == 0:
    with open(metrics_path, "w") as f:  # drop records of steps that will be redone
      f.writelines(json.dumps(r) + "\n" for r in history)
  writer = _summary_writer(workdir) if pindex == 0 else None  # TensorBoard event files
  skipped = {f"skipped/{k}": v for k, v in train_stats.skipped.items()}
  plot_path = os.path.join(workdir, "loss.png")

  def to_global(batch):
    return distributed.global_batch(batch, batch_in)

  def evaluate(state) -> dict:
    if not len(eval_rows):
      return {}
    it = iter(
      make_dataset(
        eval_rows, eval_cfg, transform=tokenize, process_index=pindex, process_count=pcount
      )
    )
    total, count = 0.0, 0.0
    for batch in itertools.islice(it, cfg.eval_batches):  # full batches only (repeat=False)
      m = eval_fn(state, model_params, to_global(batch))
      total += float(m["loss"]) * float(m["target_tokens"])
      count += float(m["target_tokens"])
    it.close()
    return {"eval_loss": total / max(count, 1.0)}

  # Padded tokens processed per step (branch prefill + synthesizer forward/backward, or the
  # text sequence).
  tokens_per_step = cfg.pipeline.batch_size * cfg.pipeline.sequence_tokens(cfg.layout)
  bar = tqdm(
    total=cfg.num_steps, initial=start_step, desc="train", unit="step", disable=pindex != 0
  )
  step = start_step
  preempted = False
  metrics_file = open(metrics_path, "a") if pindex == 0 else None  # pylint: disable=consider-using-with
  try:
    while step < cfg.num_steps:
      batch = to_global(next(iterator))
      t0 = time.perf_counter()
      state, m = step_fn(state, model_params, batch)
      loss = float(m["loss"])
      seconds = time.perf_counter() - t0
      step += 1
      if not math.isfinite(loss) or not bool(m["finite"]):
        raise NonFiniteLossError(
          f"loss is {loss} at step {step} (or its update made the adapter non-finite); "
          f"stopping. The last good checkpoint (step {ckpt.manager.latest_step()}) is kept "
          f"in {ckpt.directory}"
        )
      record = {
        "step": step,
        "loss": loss,
        "grad_norm": float(m["grad_norm"]),
        "target_tokens": float(m["target_tokens"]),
        "step_s": seconds,
        "tokens_per_s": tokens_per_step / seconds,
        **skipped,
      }
      if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.num_steps:
        record.update(evaluate(state))
      history.append(record)
      if metrics_file is not None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if writer is not None:
          for k, v in record.items():
            if k != "step":
              writer.add_scalar(k, v, step)
        if "eval_loss" in record or step == cfg.num_steps:
          plot_losses(history, plot_path)
      bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
      bar.update(1)
      saving = ckpt.should_save(step) or step == cfg.num_steps
      if saving:
        ckpt.save(step, state, iterator.get_state())
      if ckpt.reached_preemption(step):  # the same step on every process
        if not saving:
          ckpt.save(step, state, iterator.get_state())
        logging.warning("preempted: stopping after step %d (checkpoint saved)", step)
        preempted = True
        break
  finally:
    bar.close()
    iterator.close()
    ckpt.close()
    if metrics_file is not None:
      metrics_file.close()
    if writer is not None:
      writer.close()
  nnx.update(adapter, jax.device_get(state.trainable))
  return TrainResult(adapter=adapter, last_step=step, history=history, preempted=preempted)


def _check_batch_layout(mesh, sharding: NamedSharding, batch_size: int) -> None:
  """Each process's devices must hold exactly its share of every batch (batch_size / number
  of processes rows, what the pipeline gives it); a mesh on some processes' devices only
  (e.g. a 1-device mesh in a 2-process run) leaves the others' rows nowhere."""
  try:
    sharding.shard_shape((batch_size,))
  except ValueError as e:
    raise ValueError(
      f"pipeline.batch_size={batch_size} does not split over the batch axes "
      f"{sharding.spec[0]} of mesh {dict(mesh.shape)}"
    ) from e
  pcount = jax.process_count()
  local = sharding.addressable_devices_indices_map((batch_size,)).values()
  rows = len({r for (rows_slice,) in local for r in range(*rows_slice.indices(batch_size))})
  if rows * pcount != batch_size:
    procs = sorted({d.process_index for d in mesh.devices.flat})
    raise ValueError(
      f"mesh {dict(mesh.shape)} (devices of processes {procs}) gives process "
      f"{jax.process_index()} {rows} of the {batch_size} rows of a batch, but each of the "
      f"{pcount} processes reads {batch_size // pcount}: the mesh must span every process's "
      "devices evenly (e.g. --config.mesh.fsdp=-1 for all devices)"
    )


def plot_losses(history: Sequence[dict], path: str) -> None:
  """Writes a PNG of the training loss per step and the held-out loss where it was logged.

  Drawn on a bare matplotlib Figure (Agg canvas): no pyplot, so a notebook's backend is left
  as it is.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  train = [(r["step"], r["loss"]) for r in history if "loss" in r]
  held = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
  if train:
    ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.0)
  if held:
    ax.plot(*zip(*held, strict=True), "o-", label="held-out loss")
  ax.set_xlabel("step")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel("cross-entropy (nats / target token)")
  ax.grid(alpha=0.3)
  if train or held:
    ax.legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)  # a reader never sees a half-written file


def _summary_writer(workdir: str):
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

  return SummaryWriter(os.path.join(workdir, "tensorboard"))
