"""Export the adapter of a training run: newest good checkpoint -> `save_adapter` (orbax | peft).

A training workdir holds `config.json` (the run's config, written by launch.train) and
`checkpoints/<step>/` (orbax; the state's `trainable` is the pure dict of the adapter's
LoRAParam + MapperParam leaves, see ps_jax.train.step.TrainState). The adapter is rebuilt with
the run's model shape and adapter options, its trainable leaves are restored from the
checkpoint, and it is written with `ps_jax.save_adapter`, which records the base model as
`ps.io.load_config(model.source)` names it (HF hub id or absolute path, and revision when
known; PEFT's base_model_name_or_path). A run on a randomly initialised model (random_init)
has no base model to name: its export records none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from ps_jax.adapter import Adapter, save_adapter
from ps_jax.model import ModelConfig
from ps_jax.train.checkpoint import abstract_like, read_state
from ps_jax.train.loop import AdapterConfig, make_adapter
from ps_jax.train.step import OptimizerConfig, init_state, make_optimizer

CONFIG_FILE = "config.json"
EXPORT_INFO = "export.json"  # written into an export folder: where the adapter came from
FORMATS = ("orbax", "peft")


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """What export needs from a run's config.json."""

  model_source: str
  random_init: bool
  random_shape: Mapping[str, Any]
  adapter: AdapterConfig
  optimizer: OptimizerConfig
  method: str = "parallel_synthesis"  # train.method: which parts the adapter has

  @classmethod
  def from_dict(cls, c: Mapping[str, Any], where: str = CONFIG_FILE) -> RunInfo:
    try:
      model = c["model"]
      return cls(
        model_source=model["source"],
        random_init=bool(model.get("random_init")),
        random_shape=dict(model.get("random_shape") or {}),
        adapter=AdapterConfig(**c.get("adapter", {})),
        optimizer=OptimizerConfig(**c.get("optimizer", {})),
        method=(c.get("train") or {}).get("method", "parallel_synthesis"),
      )
    except (KeyError, TypeError) as e:
      raise ValueError(
        f"{where}: not a training run config ({type(e).__name__}: {e}); "
        "expected model.source and the adapter/optimizer sections"
      ) from None

  def model_config(self) -> ModelConfig:
    """The base model's config (weights are not loaded), with its name_or_path and revision;
    a random_init run's model is no published model, so it has neither."""
    from ps_jax.io import load_config  # pylint: disable=import-outside-toplevel

    config = load_config(self.model_source)
    if self.random_init:
      config = dataclasses.replace(
        config, **{**self.random_shape, "name_or_path": None, "revision": None}
      )
    return config


def read_run(workdir: str) -> RunInfo:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: export rebuilds the adapter from the run's "
      "config, which launch.train writes into its workdir"
    )
  with open(path) as f:
    return RunInfo.from_dict(json.load(f), where=path)


def _abstract_state(adapter: Adapter, optimizer: OptimizerConfig):
  return abstract_like(init_state(adapter, make_optimizer(optimizer)))


def adapter_from_checkpoint(
  workdir: str,
  run: RunInfo | None = None,
  *,
  model_config: ModelConfig | None = None,
  step: int | None = None,
) -> tuple[Adapter, int]:
  """(adapter, step) from the newest checkpoint of `workdir` that restores cleanly (an
  unreadable one is skipped with a warning), or from checkpoint `step`."""
  run = run or read_run(workdir)
  model_config = model_config or run.model_config()
  adapter = make_adapter(model_config, run.adapter, run.method)
  abstract = _abstract_state(adapter, run.optimizer)
  step, state = read_state(os.path.join(workdir, "checkpoints"), abstract, step)
  nnx.update(adapter, jax.device_get(state.trainable))
  return adapter, step


def export_adapter(
  workdir: str,
  out: str,
  format: str = "orbax",
  *,  # pylint: disable=redefined-builtin
  step: int | None = None,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Writes the run's adapter to `out` with `save_adapter`; returns (and writes as
  out/export.json) where it came from."""
  if format not in FORMATS:
    raise ValueError(f"format={format!r}; expected one of {FORMATS}")
  out = os.path.abspath(out)
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise FileExistsError(f"{out} exists and is not empty; pass overwrite to replace it")
    if not os.path.exists(os.path.join(out, EXPORT_INFO)):
      raise FileExistsError(
        f"{out} is not an adapter export (no {EXPORT_INFO}); refusing to delete it"
      )
    shutil.rmtree(out)
  run = read_run(workdir)
  adapter, restored_step = adapter_from_checkpoint(workdir, run, step=step)
  save_adapter(adapter, out, format=format)
  info = {
    "format": format,
    "workdir": os.path.abspath(workdir),
    "step": restored_step,
    "model": {
      "source": run.model_source,
      "random_init": run.random_init,
      "random_shape": dict(run.random_shape),
    },
    "base_model": None if adapter.base_model is None else adapter.base_model.as_dict(),
    "adapter": dataclasses.asdict(run.adapter),
    "method": run.method,  # the synthesis method to evaluate it with
  }
  with open(os.path.join(out, EXPORT_INFO), "w") as f:
    json.dump(info, f, indent=1)
  return info
