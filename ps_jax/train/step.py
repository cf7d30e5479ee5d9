"""The training step: a pure function of (trainable state, frozen base params, batch).

Branch caches come from the frozen base under stop_gradient; the synthesizer tokens go through
the shared `synthesis_forward`; the loss is the token-mean cross-entropy on target tokens;
gradients reach only the adapter's MapperParam and LoRAParam leaves.

`method` (static) picks the forward from synthesis.METHOD_TABLE: the cache methods read the
branches' caches (with the mapper and re-encoding as the method says), `text_lora` runs the
model on the text layout (branch texts in the prompt) through its LoRA, the same forward as
the `text` method at inference. The adapter holds only the parts its method trains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ps_jax.adapter import Adapter
from ps_jax.mapper import MapperParam
from ps_jax.model import Transformer
from ps_jax.synthesis import METHOD_TABLE, synthesis_hidden
from ps_jax.typing import Array, PyTree
from ps_jax.workers import branch_caches_from_tokens

TRAINABLE = nnx.Any(nnx.LoRAParam, MapperParam)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-4  # reference: AdamW, lr 1e-4, weight decay 0, constant
  weight_decay: float = 0.0
  warmup_steps: int = 0
  clip_norm: float | None = None


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  lr = cfg.learning_rate
  if cfg.warmup_steps:
    lr = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  chain = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  return optax.chain(*chain, optax.adamw(lr, weight_decay=cfg.weight_decay))


@struct.dataclass
class TrainState:
  step: Array  # [] int32
  trainable: PyTree  # pure dict of the adapter's LoRAParam + MapperParam leaves
  opt_state: PyTree


def split_adapter(adapter: Adapter):
  """(graphdef, trainable state, other state): one split, trainable types first."""
  graphdef, trainable, rest = nnx.split(adapter, TRAINABLE, ...)
  return graphdef, trainable, rest


def init_state(
  adapter: Adapter,
  optimizer: optax.GradientTransformation,
  *,
  sharding: jax.sharding.Sharding | None = None,
) -> TrainState:
  """The first TrainState of `adapter`; with `sharding`, every leaf (the optimizer's counters
  too) is made with that sharding, by one jitted init on its devices."""
  trainable = nnx.to_pure_dict(split_adapter(adapter)[1])

  def make(trainable):
    return TrainState(
      step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable)
    )

  if sharding is None:
    return make(trainable)
  return jax.jit(make, out_shardings=sharding)(jax.device_put(trainable, sharding))


def loss_fn(
  trainable,
  model: Transformer,
  adapter_graphdef,
  adapter_rest,
  batch,
  *,
  target_tokens: int,
  method: str = "parallel_synthesis",
):
  """(token-mean target cross-entropy, number of target tokens).

  Logits are computed only over each row's answer window [target_start, target_start + A):
  the vocabulary projection of the prompt positions would cost most of the step for nothing.
  """
  spec = METHOD_TABLE[method]
  adapter = nnx.merge(adapter_graphdef, trainable, adapter_rest)
  use_lora = spec.lora and adapter.lora is not None
  lora = adapter.lora.weights(model.dtype) if use_lora else None
  scale = adapter.lora.scale if use_lora else 0.0
  if spec.reads == "text":
    hidden, _ = model.hidden_states(
      batch["synth_tokens"], None, None, lengths=batch["synth_lengths"], lora=lora, lora_scale=scale
    )
  else:
    caches = branch_caches_from_tokens(model, batch["branch_tokens"], batch["branch_lengths"])
    hidden = synthesis_hidden(
      model,
      caches,
      batch["synth_tokens"],
      batch["synth_lengths"],
      mapper=adapter.mapper if spec.mapper else None,
      lora=lora,
      lora_scale=scale,
      reencode=spec.reencode,
    )
  return target_cross_entropy(model, hidden, batch, target_tokens)


def target_cross_entropy(model: Transformer, hidden, batch, target_tokens: int):
  """(token-mean cross-entropy of the target tokens, their count) from final hidden states
  [B, T, D] of batch["synth_tokens"], over the window [target_start, target_start + A)."""
  t = batch["synth_tokens"].shape[1]
  window = batch["target_start"][:, None] + jnp.arange(target_tokens)[None, :]  # [B, A]
  hidden = jnp.take_along_axis(hidden, jnp.minimum(window, t - 1)[..., None], axis=1)
  targets = jnp.take_along_axis(batch["synth_tokens"], jnp.minimum(window + 1, t - 1), axis=1)
  num_targets = jnp.sum(batch["loss_mask"], axis=1, keepdims=True)  # [B, 1]
  mask = (jnp.arange(target_tokens)[None, :] < num_targets).astype(jnp.float32)  # [B, A]
  ce = optax.softmax_cross_entropy_with_integer_labels(model.logits(hidden), targets)
  count = jnp.sum(mask)
  return jnp.sum(ce * mask) / jnp.maximum(count, 1.0), count


def train_step(
  state: TrainState,
  model_params,
  batch,
  *,
  model_graphdef,
  adapter_graphdef,
  adapter_rest,
  optimizer,
  target_tokens,
  method="parallel_synthesis",
):
  """One AdamW step on the adapter; returns (new state, metrics)."""
  model = nnx.merge(model_graphdef, model_params)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, count), grads = grad_fn(
    state.trainable,
    model,
    adapter_graphdef,
    adapter_rest,
    batch,
    target_tokens=target_tokens,
    method=method,
  )
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  finite = jnp.isfinite(loss) & jnp.all(
    jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trainable)])
  )
  metrics = {
    "loss": loss,
    "target_tokens": count,
    "grad_norm": optax.tree.norm(grads),
    "finite": finite,
  }
  return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics


def eval_step(
  state: TrainState,
  model_params,
  batch,
  *,
  model_graphdef,
  adapter_graphdef,
  adapter_rest,
  target_tokens,
  method="parallel_synthesis",
):
  model = nnx.merge(model_graphdef, model_params)
  loss, count = loss_fn(
    state.trainable,
    model,
    adapter_graphdef,
    adapter_rest,
    batch,
    target_tokens=target_tokens,
    method=method,
  )
  return {"loss": loss, "target_tokens": count}
