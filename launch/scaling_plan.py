r"""A compiler-checked memory and step-time plan: AOT-compiles the training step of a large model
with the Parallel-Synthesis adapter on fake CPU devices laid out as accelerator slices.

  python -m launch.scaling_plan --config configs/scaling.py

The one entry point without --distributed: it compiles for fake devices on one machine and
never joins a multi-process run.

Each target (e.g. a v5p-64 slice = 32 chips, 8 x H100) runs in a subprocess with
`--xla_force_host_platform_device_count=<chips>`; for each layout (mesh shape x rules preset)
the training step (ps_jax.train.step.train_step, as launch.train jits it) is lowered from
abstract shapes (`nnx.eval_shape`, `jax.ShapeDtypeStruct`: nothing is materialised) and
compiled. Per device it reports what `compiled.memory_analysis()` says (arguments, outputs,
temporaries) with the arguments split into frozen base parameters, trainable adapter,
optimizer state and batch from their shardings, and the FLOPs of `compiled.cost_analysis()`,
with the step time at a stated MFU. Writes <config.out>.json and .md.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (see configs/scaling.py).", lock_config=True
)
_TARGET = flags.DEFINE_string("target", None, "Internal: plan one target (in a subprocess).")
_OUT = flags.DEFINE_string("target_out", None, "Internal: where the target's rows go (JSON).")
_RENDER_ONLY = flags.DEFINE_bool(
  "render_only", False, "Rewrite <out>.md from the rows of an existing <out>.json (no compile)."
)

GIB = 2**30

_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(\S+) = (.*?)\s([a-z][\w-]*)\((.*?)\)(.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")


def _dims(type_str):
  m = _SHAPE.match(type_str)
  return [int(d) for d in m.group(1).split(",") if d] if m else None


def hlo_matmul_flops(text: str) -> float:
  """Matmul FLOPs (2 x multiply-adds of every dot) of an HLO module's entry computation, with
  fusions and calls followed and each while body counted `known_trip_count` times."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m:
        current = comps.setdefault(m.group(1), [])
        if line.startswith("ENTRY"):
          entry = m.group(1)
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTR.match(line)
    if m:
      current.append(m.groups())
  memo = {}

  def flops(name):
    if name in memo:
      return memo[name]
    memo[name] = 0.0  # guards recursion
    shapes, total = {}, 0.0
    for iname, type_str, op, operands, attrs in comps[name]:
      shapes[iname] = type_str
      if op == "dot":
        lhs = operands.split(",")[0].strip().lstrip("%")
        lhs_dims = _dims(shapes[lhs])
        contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs).group(1)
        k = 1
        for i in (int(x) for x in contract.split(",") if x):
          k *= lhs_dims[i]
        out = 1
        for d in _dims(type_str):
          out *= d
        total += 2.0 * out * k
      elif op == "while":
        body = re.search(r"body=%([^,\s]+)", attrs).group(1)
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attrs)
        if trip is None:
          raise ValueError(f"while {iname} has no known trip count")
        total += int(trip.group(1)) * flops(body)
      elif op in ("fusion", "call"):
        callee = re.search(r"(?:calls|to_apply)=%([^,\s]+)", attrs).group(1)
        total += flops(callee)
      elif op == "custom-call" and "matmul" in attrs.lower():
        raise ValueError(f"{iname}: a matmul custom call ({attrs[:80]}...) is not counted")
      elif op == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
        names = [b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else []
        total += max((flops(b) for b in names), default=0.0)
    memo[name] = total
    return total

  return flops(entry)


def _bytes(sds, sharding) -> int:
  """Bytes of one device's shard of an array of `sds`'s shape and dtype under `sharding`."""
  return math.prod(sharding.shard_shape(sds.shape)) * sds.dtype.itemsize


def _tree_bytes(tree, shardings) -> int:
  import jax  # pylint: disable=import-outside-toplevel

  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "shard_shape"))
  assert len(leaves) == len(shards), (len(leaves), len(shards))
  return sum(_bytes(x, s) for x, s in zip(leaves, shards, strict=True))


def abstract_batch(pipeline, method: str = "parallel_synthesis") -> dict:
  """ShapeDtypeStructs of one global training batch of `pipeline` (the fields TokenizeRow
  makes): branch tokens [B, R, S] and lengths [B, R] (cache layout), synthesizer tokens,
  lengths, loss mask and target start."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from ps_jax.synthesis import METHOD_TABLE  # pylint: disable=import-outside-toplevel

  b = pipeline.batch_size
  text = METHOD_TABLE[method].reads == "text"
  t = pipeline.text_length if text else pipeline.synth_tokens
  batch = {
    "synth_tokens": jax.ShapeDtypeStruct((b, t), jnp.int32),
    "synth_lengths": jax.ShapeDtypeStruct((b,), jnp.int32),
    "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.float32),
    "target_start": jax.ShapeDtypeStruct((b,), jnp.int32),
  }
  if not text:
    r, s = pipeline.max_branches, pipeline.branch_tokens
    batch["branch_tokens"] = jax.ShapeDtypeStruct((b, r, s), jnp.int32)
    batch["branch_lengths"] = jax.ShapeDtypeStruct((b, r), jnp.int32)
  return batch


def analytic_flops(model_config, pipeline) -> dict:
  """Matmul FLOPs of one step by hand (global, attention included, norms and softmax not):
  branch prefill forward only (frozen, no gradient), synthesizer forward plus the backward's
  input gradients (the frozen base gets no weight gradient; LoRA's are negligible), logits
  only over the A-token target window (forward + input gradient)."""
  c, p = model_config, pipeline
  d, f, nh, kh = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads
  kv = kh * c.head_dim
  per_token = 2 * (d * nh + 2 * d * kv + nh * d + 3 * d * f)  # q, k, v, o, gate/up/down
  b, r, s, t, a = p.batch_size, p.max_branches, p.branch_tokens, p.synth_tokens, p.target_tokens
  layers = c.num_layers
  branch = layers * b * r * (s * per_token + 2 * 2 * s * s * nh)  # QK^T and PV over S keys
  synth_fwd = layers * b * (t * per_token + 2 * 2 * t * (r * s + t) * nh)
  logits_fwd = 2 * b * a * d * c.vocab_size
  total = branch + 2 * (synth_fwd + logits_fwd)
  return {"branch_prefill": branch, "synth_fwd": synth_fwd, "total": total}


def plan_layout(
  model_config,
  *,
  dtype,
  mesh_config,
  preset: str,
  pipeline,
  adapter_config,
  optimizer_config,
  method: str = "parallel_synthesis",
  devices=None,
) -> dict:
  """Compiles one training step ahead of time on `mesh_config` with the `preset` rules; returns
  per-device memory (bytes) and FLOPs, nothing materialised. The optimizer is built as
  launch.train builds it: over the adapter's trainable leaves only."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel

  from ps_jax.model import Transformer  # pylint: disable=import-outside-toplevel
  from ps_jax.sharding import (  # pylint: disable=import-outside-toplevel
    logical_to_spec,
    make_mesh,
    rules_from_config,
    state_shardings,
  )
  from ps_jax.train.loop import make_adapter  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import (  # pylint: disable=import-outside-toplevel
    TrainState,
    make_optimizer,
    split_adapter,
    train_step,
  )

  mesh = make_mesh(mesh_config, devices)
  rules = rules_from_config({"preset": preset})
  model = nnx.eval_shape(lambda: Transformer(model_config, dtype=dtype, rngs=nnx.Rngs(0)))
  model_graphdef, params = nnx.split(model)
  param_shardings = state_shardings(params, mesh, rules)
  adapter = nnx.eval_shape(lambda: make_adapter(model_config, adapter_config, method))
  adapter_graphdef, trainable, adapter_rest = split_adapter(adapter)
  trainable = nnx.to_pure_dict(trainable)
  optimizer = make_optimizer(optimizer_config)
  state = jax.eval_shape(
    lambda t: TrainState(step=jnp.zeros((), jnp.int32), trainable=t, opt_state=optimizer.init(t)),
    trainable,
  )
  replicated = NamedSharding(mesh, PartitionSpec())  # the adapter and its state, as launch.train
  state_shardings_ = jax.tree.map(lambda _: replicated, state)
  batch = abstract_batch(pipeline, method)
  batch_shardings = {
    k: NamedSharding(
      mesh, logical_to_spec(("batch",) + (None,) * (v.ndim - 1), v.shape, mesh, rules)
    )
    for k, v in batch.items()
  }
  step = jax.jit(
    functools.partial(
      train_step,
      model_graphdef=model_graphdef,
      adapter_graphdef=adapter_graphdef,
      adapter_rest=adapter_rest,
      optimizer=optimizer,
      target_tokens=pipeline.target_tokens,
      method=method,
    ),
    in_shardings=(state_shardings_, param_shardings, batch_shardings),
    out_shardings=replicated,
    donate_argnums=0,
  )
  t0 = time.perf_counter()
  lowered = step.lower(state, params, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost

  def count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

  opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  parts = {
    "base_params": _tree_bytes(params, param_shardings),
    "adapter": _tree_bytes(state.trainable, jax.tree.map(lambda _: replicated, state.trainable)),
    "optimizer_state": _tree_bytes(
      state.opt_state, jax.tree.map(lambda _: replicated, state.opt_state)
    ),
    "step_counter": 4,
    "batch": _tree_bytes(batch, batch_shardings),
  }
  batch_spec = batch_shardings["synth_tokens"].spec
  return {
    "mesh": dict(mesh.shape),
    "preset": preset,
    "batch_spec": str(batch_spec),
    "base_param_count": count(params),
    "trainable_param_count": count(trainable),
    # Every optimizer-state array has the shape of a trainable leaf (AdamW mu and nu, no more):
    # the frozen base carries none.
    "optimizer_state_count": sum(math.prod(x.shape) for x in opt_leaves),
    "optimizer_state_shapes_are_trainable": sorted(x.shape for x in opt_leaves)
    == sorted(x.shape for x in jax.tree.leaves(trainable) for _ in range(2)),
    "per_device_bytes": {
      **parts,
      "arguments": int(mem.argument_size_in_bytes),
      "outputs": int(mem.output_size_in_bytes),
      "aliased": int(mem.alias_size_in_bytes),
      "temp": int(mem.temp_size_in_bytes),
      "code": int(mem.generated_code_size_in_bytes),
    },
    # Matmul FLOPs of the partitioned program with loop trip counts (the step time's basis);
    # cost_analysis() counts each while body (the layer scans) once.
    "per_device_flops": hlo_matmul_flops(compiled.as_text()),
    "per_device_cost_analysis_flops": float(cost.get("flops", float("nan"))),
    "per_device_bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
    "lower_s": t1 - t0,
    "compile_s": t2 - t1,
  }


def _model_config(c):
  from ps_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel

  return ModelConfig(**dict(c.model.shape))


def _pipeline(c, step: str):
  from ps_jax.data.pipeline import PipelineConfig  # pylint: disable=import-outside-toplevel

  return PipelineConfig(**dict(c.steps[step]))


def run_target(c, name: str) -> list[dict]:
  """Plans every layout of target `name` on this process's devices (must be its chip count)."""
  import jax  # pylint: disable=import-outside-toplevel

  from ps_jax.experiment import dtype  # pylint: disable=import-outside-toplevel
  from ps_jax.sharding import MeshConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.train.loop import AdapterConfig  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import OptimizerConfig  # pylint: disable=import-outside-toplevel

  target = c.targets[name]
  if jax.device_count() != target.chips:
    raise ValueError(f"target {name}: {target.chips} devices expected, {jax.device_count()} seen")
  rows = []
  for step, layout in ((s, lay) for s in c.steps for lay in target.layouts):
    logging.info("target %s step %s layout %s: compiling", name, step, layout.name)
    row = plan_layout(
      _model_config(c),
      dtype=dtype(c.model.dtype),
      mesh_config=MeshConfig.from_config(layout.mesh),
      preset=layout.preset,
      pipeline=_pipeline(c, step),
      adapter_config=AdapterConfig(**dict(c.adapter)),
      optimizer_config=OptimizerConfig(**dict(c.optimizer)),
      method=c.method,
    )
    row.update(target=name, layout=layout.name, step=step)
    logging.info("%s", json.dumps(row))
    rows.append(row)
  return rows


def step_time(row: dict, peak_flops: float, mfu: float) -> float:
  return row["per_device_flops"] / (peak_flops * mfu)


def peak_bytes(row: dict) -> int:
  """Arguments + temporaries + outputs not aliased to a donated argument (bytes per device)."""
  b = row["per_device_bytes"]
  return b["arguments"] + b["temp"] + b["outputs"] - b["aliased"]


def render(c, rows: list[dict], meta: dict) -> str:
  """The markdown report of `rows` (one table per step setting, then the caveats)."""
  mc = _model_config(c)
  first = rows[0]
  lines = [
    f"# Scaling plan: {c.title}",
    "",
    f"Produced by `python -m launch.scaling_plan --config configs/scaling.py` on {meta['machine']}"
    f", {meta['date']} (jax {meta['jax']}, {meta['cpu_cores']} CPU cores). Every number below"
    " comes from an ahead-of-time compile of the training step on fake CPU devices; nothing ran"
    " on an accelerator.",
    "",
    f"Model: {mc.family}, {mc.num_layers} layers, hidden {mc.hidden_size}, {mc.num_heads} q heads"
    f" / {mc.num_kv_heads} kv heads x {mc.head_dim}, MLP {mc.intermediate_size}, vocab"
    f" {mc.vocab_size}, {c.model.dtype} weights ({first['base_param_count'] / 1e9:.2f} B"
    f" parameters, frozen). Adapter: {c.method}, LoRA rank {c.adapter.rank} on q/k/v/o + cache"
    f" mapper ({first['trainable_param_count'] / 1e6:.2f} M trainable parameters, fp32), AdamW"
    " over the adapter only.",
    "",
    c.setup_note,
    "",
    "Columns, per device, GiB: *base*, *adapter*, *opt* (optimizer state) and *batch* are the"
    " step's arguments split by their shardings (their sum equals"
    " `memory_analysis().argument_size_in_bytes`, checked); *temp* is `temp_size_in_bytes`"
    " (activations, the backward's saved residuals, collective buffers); *peak* = arguments +"
    " temp + outputs - aliased (donated) outputs; *fits* compares peak with the chip's HBM."
    " *TFLOP* are matmul FLOPs per device from the compiled HLO; *step s* = TFLOP / (peak bf16"
    f" FLOP/s x MFU {c.mfu:.0%}). *rules*: the `c.sharding.preset`; *batch split*: the batch's"
    " PartitionSpec (mesh axes that do not divide the 4 rows are dropped).",
  ]
  for step in c.steps:
    p = _pipeline(c, step)
    ana = analytic_flops(mc, p)
    lines += [
      "",
      f"## Step `{step}`: batch {p.batch_size}, {p.max_branches} branches x {p.branch_tokens}"
      f" tokens, synthesizer {p.synth_tokens} tokens, loss window {p.target_tokens}",
      "",
      f"Analytic matmul FLOPs per step (global, `analytic_flops`): {ana['total'] / 1e12:,.0f}"
      f" TFLOP (branch prefill {ana['branch_prefill'] / 1e12:,.0f}, synthesizer forward"
      f" {ana['synth_fwd'] / 1e12:,.0f}, about twice that with its backward).",
      "",
      "| target | layout | mesh (data, fsdp, tensor) | rules | batch split | base | adapter |"
      " opt | batch | temp | peak | HBM | fits | TFLOP | x devices / analytic | step s |"
      " compile s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (r for r in rows if r["step"] == step):
      t = c.targets[row["target"]]
      b, mesh = row["per_device_bytes"], row["mesh"]
      peak = peak_bytes(row)
      devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
      lines.append(
        f"| {row['target']} | {row['layout']} |"
        f" ({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}) | {row['preset']} |"
        f" `{row['batch_spec']}` | {b['base_params'] / GIB:.2f} | {b['adapter'] / GIB:.3f} |"
        f" {b['optimizer_state'] / GIB:.3f} | {b['batch'] / GIB:.4f} | {b['temp'] / GIB:,.1f} |"
        f" {peak / GIB:,.1f} | {t.hbm_gib} | {'yes' if peak <= t.hbm_gib * GIB else 'no'} |"
        f" {row['per_device_flops'] / 1e12:,.1f} |"
        f" {row['per_device_flops'] * devices / ana['total']:.2f} |"
        f" {step_time(row, t.peak_flops, c.mfu):.2f} | {row['compile_s']:.0f} |"
      )
  lines += ["", "## What fits", ""]
  for step in c.steps:
    for name, t in c.targets.items():
      fits = [
        r
        for r in rows
        if r["step"] == step and r["target"] == name and peak_bytes(r) <= t.hbm_gib * GIB
      ]
      if not fits:
        lines.append(f"- `{step}` on {name}: no layout fits {t.hbm_gib} GiB per device.")
        continue
      fast = min(fits, key=lambda r: (r["per_device_flops"], peak_bytes(r)))
      small = min(fits, key=peak_bytes)
      lines.append(
        f"- `{step}` on {name}: {len(fits)} of"
        f" {sum(r['step'] == step and r['target'] == name for r in rows)} layouts fit; least"
        f" compute per device: {fast['layout']} ({step_time(fast, t.peak_flops, c.mfu):.2f} s"
        f" per step at {c.mfu:.0%} MFU, communication not counted); smallest peak:"
        f" {small['layout']} ({peak_bytes(small) / GIB:.1f} GiB)."
      )
  lines += [
    "",
    "Peak bf16 FLOP/s per chip: "
    + "; ".join(f"{n}: {t.peak_flops / 1e12:.0f} T ({t.peak_note})" for n, t in c.targets.items())
    + ". A devices x FLOPs / analytic ratio well above 1 means rows computed on several devices.",
    "",
    "**The frozen base carries no optimizer state.** The optimizer"
    " (`ps_jax.train.step.make_optimizer`, AdamW) is initialised over the adapter's trainable"
    f" leaves only: {first['optimizer_state_count']:,} optimizer-state elements ="
    f" 2 x {first['trainable_param_count']:,} trainable parameters (mu and nu); every"
    " optimizer-state array has a trainable leaf's shape"
    f" ({'checked' if first['optimizer_state_shapes_are_trainable'] else 'NOT the case'}), so"
    f" the *opt* column is {first['per_device_bytes']['optimizer_state'] / 2**20:.0f} MiB"
    " whatever the layout. AdamW moments for the whole model in fp32 would be"
    f" {2 * 4 * first['base_param_count'] / GIB:.0f} GiB.",
    "",
    "## Caveats",
    "",
    *[f"- {x}" for x in c.caveats],
    "",
  ]
  return "\n".join(lines)


def _run_child(config_path: str, overrides: list[str], name: str, chips: int) -> list[dict]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={chips}"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "rows.json")
    cmd = [sys.executable, "-m", "launch.scaling_plan", "--config", config_path, *overrides]
    cmd += [f"--target={name}", f"--target_out={out}"]
    subprocess.run(cmd, env=env, cwd=_ROOT, check=True)
    with open(out) as f:
      return json.load(f)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value
  if _TARGET.value:
    rows = run_target(c, _TARGET.value)
    with open(_OUT.value, "w") as f:
      json.dump(rows, f)
    return
  out = c.out if os.path.isabs(c.out) else os.path.join(_ROOT, c.out)
  if _RENDER_ONLY.value:
    with open(out + ".json") as f:
      saved = json.load(f)
    with open(out + ".md", "w") as f:
      f.write(render(c, saved["rows"], saved["meta"]))
    print(f"wrote {out}.md from {out}.json")
    return
  import jax  # pylint: disable=import-outside-toplevel

  # The config flag and its overrides, passed on to each target's subprocess.
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  rows = []
  for name, target in c.targets.items():
    t0 = time.perf_counter()
    rows += _run_child(flags.FLAGS["config"].config_filename, overrides, name, target.chips)
    logging.info("target %s: %.0f s", name, time.perf_counter() - t0)
  meta = {
    "machine": c.machine or f"a {platform.machine()} CPU host",
    "date": datetime.date.today().isoformat(),
    "jax": jax.__version__,
    "cpu_cores": len(os.sched_getaffinity(0)),
  }
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(
      {
        "meta": meta,
        "config": json.loads(c.to_json_best_effort()),
        "analytic_flops": {s: analytic_flops(_model_config(c), _pipeline(c, s)) for s in c.steps},
        "rows": rows,
      },
      f,
      indent=1,
    )
  with open(out + ".md", "w") as f:
    f.write(render(c, rows, meta))
  print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
