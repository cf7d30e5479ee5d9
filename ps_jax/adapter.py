"""The synthesizer adapter: LoRA on q/k/v/o (nnx.LoRAParam) plus the cache mapper (MapperParam).

Files: our own orbax checkpoint, or the reference release layout (a PEFT LoRA folder
`judger_lora/` with adapter_config.json + adapter_model.safetensors, and `cache_mapper.pt` +
`cache_mapper_config.json`). Either part may be absent: identity mapper / no LoRA.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.mapper import CacheMapper, MapperParam
from ps_jax.model import ModelConfig

LORA_TARGETS = ("q", "k", "v", "o")
_PEFT_MODULE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
PEFT_DIR, MAPPER_FILE, MAPPER_CONFIG = "judger_lora", "cache_mapper.pt", "cache_mapper_config.json"


def _projection_dims(config: ModelConfig) -> dict[str, tuple[int, int]]:
  nh, kh = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  d = config.hidden_size
  return {"q": (d, nh), "k": (d, kh), "v": (d, kh), "o": (nh, d)}


class LoRA(nnx.Module):
  """Layer-stacked low-rank deltas: W x + scale * B(A(x)); B starts at zero."""

  def __init__(self, config: ModelConfig, *, rank: int = 16, alpha: float = 32.0,
               rngs: nnx.Rngs):
    self.rank, self.alpha = rank, alpha
    l = config.num_layers
    self.a, self.b = nnx.Dict(), nnx.Dict()
    for name, (din, dout) in _projection_dims(config).items():
      bound = din ** -0.5  # kaiming-uniform(a=sqrt(5)) as PEFT initialises lora_A
      self.a[name] = nnx.LoRAParam(jax.random.uniform(
          rngs.params(), (l, din, rank), jnp.float32, -bound, bound))  # [L, in, r]
      self.b[name] = nnx.LoRAParam(jnp.zeros((l, rank, dout), jnp.float32))  # [L, r, out]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def weights(self, dtype) -> dict:
    """The forward's LoRA input: {"q": {"a": [L, in, r], "b": [L, r, out]}, ...}."""
    return {n: {"a": self.a[n][...].astype(dtype), "b": self.b[n][...].astype(dtype)}
            for n in LORA_TARGETS}


class Adapter(nnx.Module):
  """Mapper and/or LoRA for one base model; `None` parts mean identity mapper / no LoRA."""

  def __init__(self, config: ModelConfig, *, mapper: CacheMapper | None,
               lora: LoRA | None):
    self.model_shape = _model_shape(config)
    self.mapper = mapper
    self.lora = lora

  @classmethod
  def create(cls, config: ModelConfig, *, rank: int = 16, alpha: float = 32.0,
             mapper_hidden_dim: int = 32, metadata_features: str = "both",
             per_head_mapper: bool = False, seed: int = 0) -> "Adapter":
    rngs = nnx.Rngs(seed)
    return cls(config,
               mapper=CacheMapper(config.num_layers, config.num_kv_heads,
                                  hidden_dim=mapper_hidden_dim,
                                  metadata_features=metadata_features,
                                  per_head=per_head_mapper, rngs=rngs),
               lora=LoRA(config, rank=rank, alpha=alpha, rngs=rngs))

  def check_compatible(self, config: ModelConfig) -> None:
    if self.model_shape != _model_shape(config):
      raise ValueError(f"adapter was made for a model with {self.model_shape}, "
                       f"but this model has {_model_shape(config)}")


def _model_shape(config: ModelConfig) -> tuple:
  return (("num_layers", config.num_layers), ("hidden_size", config.hidden_size),
          ("num_heads", config.num_heads), ("num_kv_heads", config.num_kv_heads),
          ("head_dim", config.head_dim))


# ---------------------------------------------------------------------------- files


def save_adapter(adapter: Adapter, path: str, format: str = "orbax") -> None:  # pylint: disable=redefined-builtin
  """Writes the adapter as our orbax checkpoint or in the reference (PEFT) layout."""
  path = os.path.abspath(path)
  if format == "orbax":
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    os.makedirs(path, exist_ok=True)
    meta = {"model_shape": dict(adapter.model_shape),
            "lora": None if adapter.lora is None else
                    {"rank": adapter.lora.rank, "alpha": adapter.lora.alpha},
            "mapper": None if adapter.mapper is None else _mapper_config(adapter.mapper)}
    with open(os.path.join(path, "adapter.json"), "w") as f:
      json.dump(meta, f, indent=1)
    state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(adapter)))
    with ocp.PyTreeCheckpointer() as ckptr:
      ckptr.save(os.path.join(path, "params"), state, force=True)
  elif format == "peft":
    os.makedirs(path, exist_ok=True)
    if adapter.lora is not None:
      _save_peft(adapter, os.path.join(path, PEFT_DIR))
    if adapter.mapper is not None:
      _save_reference_mapper(adapter.mapper, path)
  else:
    raise ValueError(f"format={format!r}; expected 'orbax' or 'peft'")


def load_adapter(path: str, config: ModelConfig) -> Adapter:
  """Reads our orbax adapter or a reference release directory, checked against `config`."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, "adapter.json")):
    return _load_orbax(path, config)
  has_lora = os.path.exists(os.path.join(path, PEFT_DIR, "adapter_config.json"))
  has_mapper = os.path.exists(os.path.join(path, MAPPER_FILE))
  if not (has_lora or has_mapper):
    raise FileNotFoundError(f"{path}: neither our adapter.json nor a reference "
                            f"{PEFT_DIR}/ or {MAPPER_FILE} found")
  lora = _load_peft(os.path.join(path, PEFT_DIR), config) if has_lora else None
  mapper = _load_reference_mapper(path, config) if has_mapper else None
  return Adapter(config, mapper=mapper, lora=lora)


def _load_orbax(path: str, config: ModelConfig) -> Adapter:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with open(os.path.join(path, "adapter.json")) as f:
    meta = json.load(f)
  shape = tuple(meta["model_shape"].items())
  if shape != _model_shape(config):
    raise ValueError(f"{path}: adapter was made for a model with {dict(shape)}, "
                     f"but this model has {dict(_model_shape(config))}")
  rngs = nnx.Rngs(0)
  m, lo = meta["mapper"], meta["lora"]
  adapter = Adapter(
      config,
      mapper=None if m is None else CacheMapper(
          config.num_layers, config.num_kv_heads, hidden_dim=m["hidden_dim"],
          metadata_features=m["metadata_features"], per_head=m.get("per_head", False),
          rngs=rngs),
      lora=None if lo is None else LoRA(config, rank=lo["rank"], alpha=lo["alpha"], rngs=rngs))
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(path, "params"))
  expected = nnx.to_pure_dict(nnx.state(adapter))
  _check_tree_shapes(expected, restored, path)
  nnx.update(adapter, jax.tree.map(jnp.asarray, restored))
  return adapter


def _check_tree_shapes(expected, got, source: str, prefix: str = "") -> None:
  for key, value in expected.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if key not in got:
      raise ValueError(f"{source}: tensor {name} is missing")
    if isinstance(value, dict):
      _check_tree_shapes(value, got[key], source, name)
    elif tuple(np.shape(got[key])) != tuple(np.shape(value)):
      raise ValueError(f"{source}: tensor {name} has shape {tuple(np.shape(got[key]))}, "
                       f"expected {tuple(np.shape(value))}")


def _mapper_config(mapper: CacheMapper) -> dict:
  return {"hidden_dim": mapper.hidden_dim, "metadata_features": mapper.metadata_features,
          "per_head": mapper.per_head}


def _peft_key(layer: int, target: str, ab: str) -> str:
  return (f"base_model.model.model.layers.{layer}.self_attn.{_PEFT_MODULE[target]}"
          f".lora_{ab}.weight")


def _save_peft(adapter: Adapter, folder: str) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  lora = adapter.lora
  tensors = {}
  for t in LORA_TARGETS:
    a, b = np.asarray(lora.a[t][...]), np.asarray(lora.b[t][...])
    for i in range(a.shape[0]):
      tensors[_peft_key(i, t, "A")] = np.ascontiguousarray(a[i].T)  # [r, in]
      tensors[_peft_key(i, t, "B")] = np.ascontiguousarray(b[i].T)  # [out, r]
  save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
  with open(os.path.join(folder, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
               "lora_alpha": lora.alpha, "lora_dropout": 0.0, "bias": "none",
               "use_rslora": False, "target_modules": [_PEFT_MODULE[t] for t in LORA_TARGETS]},
              f, indent=1)


def _load_peft(folder: str, config: ModelConfig) -> LoRA:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  with open(os.path.join(folder, "adapter_config.json")) as f:
    cfg = json.load(f)
  targets = set(cfg.get("target_modules") or [])
  if targets != set(_PEFT_MODULE.values()):
    raise ValueError(f"{folder}: LoRA target_modules {sorted(targets)}; ps_jax supports "
                     f"exactly {sorted(_PEFT_MODULE.values())}")
  rank = int(cfg["r"])
  alpha = float(cfg["lora_alpha"])
  if cfg.get("use_rslora"):
    alpha = alpha * rank ** 0.5  # rsLoRA scales by alpha / sqrt(r); fold it into alpha / r
  lora = LoRA(config, rank=rank, alpha=alpha, rngs=nnx.Rngs(0))
  dims = _projection_dims(config)
  with safe_open(os.path.join(folder, "adapter_model.safetensors"), framework="numpy") as f:
    names = set(f.keys())
    deeper = sorted(n for n in names if _layer_of(n) >= config.num_layers)
    if deeper:
      raise ValueError(f"{folder}: LoRA has tensors for layer {_layer_of(deeper[0])} (e.g. "
                       f"{deeper[0]!r}) but the model has {config.num_layers} layers")

    def get(key, shape):
      # PEFT may save with or without the adapter name ("default") in the key.
      alt = key.replace(".weight", ".default.weight")
      name = key if key in names else alt if alt in names else None
      if name is None:
        raise ValueError(f"{folder}: missing tensor {key!r}")
      x = f.get_tensor(name)
      if tuple(x.shape) != shape:
        raise ValueError(f"{folder}: tensor {name!r} has shape {tuple(x.shape)}, "
                         f"expected {shape} for this model")
      return x

    for t in LORA_TARGETS:
      din, dout = dims[t]
      lora.a[t] = nnx.LoRAParam(jnp.asarray(np.stack(
          [get(_peft_key(i, t, "A"), (rank, din)).T for i in range(config.num_layers)]),
          jnp.float32))
      lora.b[t] = nnx.LoRAParam(jnp.asarray(np.stack(
          [get(_peft_key(i, t, "B"), (dout, rank)).T for i in range(config.num_layers)]),
          jnp.float32))
  return lora


def _layer_of(name: str) -> int:
  parts = name.split(".")
  return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1


def _save_reference_mapper(mapper: CacheMapper, folder: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if mapper.per_head:
    raise ValueError("the per-head mapper ablation has no reference-format equivalent")
  state = {"net.0.weight": torch.tensor(np.asarray(mapper.w1[...]).T.copy()),
           "net.0.bias": torch.tensor(np.asarray(mapper.b1[...])),
           "net.2.weight": torch.tensor(np.asarray(mapper.w2[...]).T.copy()),
           "net.2.bias": torch.tensor(np.asarray(mapper.b2[...]))}
  torch.save(state, os.path.join(folder, MAPPER_FILE))
  with open(os.path.join(folder, MAPPER_CONFIG), "w") as f:
    json.dump({"hidden_dim": mapper.hidden_dim,
               "metadata_features": mapper.metadata_features}, f, indent=1)


def _load_reference_mapper(folder: str, config: ModelConfig) -> CacheMapper:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {MAPPER_FILE} (a torch state dict) needs torch: "
                      "pip install 'ps_jax[test]' or torch") from e
  cfg_path = os.path.join(folder, MAPPER_CONFIG)
  cfg = {}
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      cfg = json.load(f)
  raw = torch.load(os.path.join(folder, MAPPER_FILE), map_location="cpu", weights_only=False)
  state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
  cfg = {**{k: raw[k] for k in ("hidden_dim", "metadata_features") if k in raw}, **cfg}
  mapper = CacheMapper(config.num_layers, config.num_kv_heads,
                       hidden_dim=int(cfg.get("hidden_dim", 32)),
                       metadata_features=cfg.get("metadata_features", "both"),
                       rngs=nnx.Rngs(0))
  for ours, theirs, transpose in (("w1", "net.0.weight", True), ("b1", "net.0.bias", False),
                                  ("w2", "net.2.weight", True), ("b2", "net.2.bias", False)):
    if theirs not in state:
      raise ValueError(f"{folder}/{MAPPER_FILE}: missing tensor {theirs!r}")
    x = state[theirs].detach().float().numpy()
    x = x.T if transpose else x
    expected = getattr(mapper, ours).shape
    if x.shape != expected:
      raise ValueError(f"{folder}/{MAPPER_FILE}: tensor {theirs!r} has shape "
                       f"{tuple(x.T.shape if transpose else x.shape)}, expected "
                       f"{tuple(expected[::-1] if transpose else expected)}")
    setattr(mapper, ours, MapperParam(jnp.asarray(x)))
  return mapper
