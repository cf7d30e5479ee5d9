"""The synthesizer adapter: LoRA on q/k/v/o (nnx.LoRAParam) plus the cache mapper (MapperParam).

Files: our own orbax checkpoint, or the reference release layout (a PEFT LoRA folder
`judger_lora/` with adapter_config.json + adapter_model.safetensors, and `cache_mapper.pt` +
`cache_mapper_config.json`). Either part may be absent: identity mapper / no LoRA.
Both layouts as we write them carry `adapter.json`, which records the base model's shape, so
`load_adapter(path)` needs no config; a reference folder without it (the authors' release)
gets its shape from the LoRA tensors. Nothing is unpickled beyond tensors and plain values.
The base model's name (HF hub id or path) and revision, when known, are recorded too: in
adapter.json and as PEFT's `base_model_name_or_path` / `revision` in adapter_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ps_jax.mapper import CacheMapper, MapperParam
from ps_jax.model import ModelConfig

LORA_TARGETS = ("q", "k", "v", "o")
_PEFT_MODULE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
PEFT_DIR, MAPPER_FILE, MAPPER_CONFIG = "judger_lora", "cache_mapper.pt", "cache_mapper_config.json"
META_FILE = "adapter.json"  # format, model shape, base model (+ orbax: LoRA and mapper settings)


@dataclasses.dataclass(frozen=True)
class BaseModel:
  """Which model an adapter was made for, as transformers and PEFT name it: an HF hub id or a
  local path (`base_model_name_or_path`) and the hub revision when known."""

  name_or_path: str
  revision: str | None = None

  @classmethod
  def of(cls, config: ModelConfig | ModelShape) -> BaseModel | None:
    """From a ModelConfig's `name_or_path` / `revision` (set by ps.load); None if unknown."""
    if not isinstance(config, ModelConfig) or not config.name_or_path:
      return None
    return cls(config.name_or_path, config.revision)

  @classmethod
  def from_dict(cls, d: Any, where: str) -> BaseModel | None:
    """From `as_dict` (adapter.json's "base_model"); null there means unknown."""
    if d is None:
      return None
    if (
      not isinstance(d, Mapping)
      or set(d) - {"name_or_path", "revision"}
      or not isinstance(d.get("name_or_path"), str)
      or not d["name_or_path"]
      or not isinstance(d.get("revision"), str | None)
    ):
      raise ValueError(
        f"{where}: base_model {d!r} is neither null nor a record of a name_or_path string and "
        "a revision (string or null)"
      )
    return cls(d["name_or_path"], d.get("revision"))

  @classmethod
  def from_peft_config(cls, cfg: Mapping[str, Any]) -> BaseModel | None:
    """From a PEFT adapter_config.json (any writer's: what is not a string is ignored)."""
    name, revision = cfg.get("base_model_name_or_path"), cfg.get("revision")
    if not (isinstance(name, str) and name):
      return None
    return cls(name, revision if isinstance(revision, str) and revision else None)

  def as_dict(self) -> dict[str, str | None]:
    return {"name_or_path": self.name_or_path, "revision": self.revision}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelShape:
  """The base-model dimensions an adapter depends on.

  Heads may be unknown (None) when the shape was inferred from a reference LoRA's tensors,
  which give only the projection widths; comparisons then use the fields both sides know.
  """

  num_layers: int
  hidden_size: int
  num_heads: int | None = None
  num_kv_heads: int | None = None
  head_dim: int | None = None
  q_size: int  # num_heads * head_dim: the q projection's width
  kv_size: int  # num_kv_heads * head_dim

  @classmethod
  def of(cls, config: ModelConfig) -> ModelShape:
    return cls(
      num_layers=config.num_layers,
      hidden_size=config.hidden_size,
      q_size=config.num_heads * config.head_dim,
      kv_size=config.num_kv_heads * config.head_dim,
      num_heads=config.num_heads,
      num_kv_heads=config.num_kv_heads,
      head_dim=config.head_dim,
    )

  @classmethod
  def from_dict(cls, d: Any, where: str) -> ModelShape:
    """From `as_dict` (or the older 5-field record without q_size/kv_size)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if (
      not isinstance(d, Mapping)
      or set(d) - set(names)
      or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in d.values())
    ):
      raise ValueError(
        f"{where}: model_shape {d!r} is not a record of positive integers among {names}"
      )
    d = dict(d)
    for size, heads in (("q_size", "num_heads"), ("kv_size", "num_kv_heads")):
      if heads in d and "head_dim" in d:
        width = d.setdefault(size, d[heads] * d["head_dim"])
        if width != d[heads] * d["head_dim"]:
          raise ValueError(
            f"{where}: model_shape {d} has {size}={width} != "
            f"{heads} * head_dim = {d[heads] * d['head_dim']}"
          )
    missing = [n for n in ("num_layers", "hidden_size", "q_size", "kv_size") if n not in d]
    if missing:
      raise ValueError(f"{where}: model_shape {dict(d)} lacks {missing}")
    return cls(**d)

  def as_dict(self) -> dict[str, int]:
    """The known fields (the adapter.json record)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

  def __str__(self) -> str:  # the widths only where the heads do not already say them
    d = self.as_dict()
    if self.num_heads is not None and self.num_kv_heads is not None and self.head_dim:
      del d["q_size"], d["kv_size"]
    return str(d)

  def differs_from(self, other: ModelShape) -> bool:
    a, b = self.as_dict(), other.as_dict()
    return any(a[k] != b[k] for k in a.keys() & b.keys())


def _shape(config: ModelConfig | ModelShape) -> ModelShape:
  return config if isinstance(config, ModelShape) else ModelShape.of(config)


def _projection_dims(shape: ModelShape) -> dict[str, tuple[int, int]]:
  d, nh, kh = shape.hidden_size, shape.q_size, shape.kv_size
  return {"q": (d, nh), "k": (d, kh), "v": (d, kh), "o": (nh, d)}


class LoRA(nnx.Module):
  """Layer-stacked low-rank deltas: W x + scale * B(A(x)); B starts at zero."""

  def __init__(
    self, config: ModelConfig | ModelShape, *, rank: int = 16, alpha: float = 32.0, rngs: nnx.Rngs
  ):
    self.rank, self.alpha = rank, alpha
    shape = _shape(config)
    num_layers = shape.num_layers
    self.a, self.b = nnx.Dict(), nnx.Dict()
    for name, (din, dout) in _projection_dims(shape).items():
      bound = din**-0.5  # kaiming-uniform(a=sqrt(5)) as PEFT initialises lora_A
      self.a[name] = nnx.LoRAParam(
        jax.random.uniform(rngs.params(), (num_layers, din, rank), jnp.float32, -bound, bound)
      )  # [L, in, r]
      self.b[name] = nnx.LoRAParam(jnp.zeros((num_layers, rank, dout), jnp.float32))  # [L, r, out]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def weights(self, dtype) -> dict:
    """The forward's LoRA input: {"q": {"a": [L, in, r], "b": [L, r, out]}, ...}."""
    return {
      n: {"a": self.a[n][...].astype(dtype), "b": self.b[n][...].astype(dtype)}
      for n in LORA_TARGETS
    }


class Adapter(nnx.Module):
  """Mapper and/or LoRA for one base model; `None` parts mean identity mapper / no LoRA.

  `config` is the base model's ModelConfig or just its ModelShape (all an adapter needs to
  run). `base_model` names the model (saved as PEFT's base_model_name_or_path and revision);
  by default it is taken from a ModelConfig's `name_or_path` / `revision` (None if unknown).
  """

  def __init__(
    self,
    config: ModelConfig | ModelShape,
    *,
    mapper: CacheMapper | None,
    lora: LoRA | None,
    base_model: BaseModel | None = None,
  ):
    self.model_shape = _shape(config)
    self.base_model = base_model if base_model is not None else BaseModel.of(config)
    self.mapper = mapper
    self.lora = lora

  @classmethod
  def create(
    cls,
    config: ModelConfig | ModelShape,
    *,
    rank: int = 16,
    alpha: float = 32.0,
    mapper_hidden_dim: int = 32,
    metadata_features: str = "both",
    per_head_mapper: bool = False,
    seed: int = 0,
  ) -> Adapter:
    rngs = nnx.Rngs(seed)
    shape = _shape(config)
    return cls(
      shape,
      base_model=BaseModel.of(config),
      mapper=CacheMapper(
        shape.num_layers,
        shape.num_kv_heads,
        hidden_dim=mapper_hidden_dim,
        metadata_features=metadata_features,
        per_head=per_head_mapper,
        rngs=rngs,
      ),
      lora=LoRA(shape, rank=rank, alpha=alpha, rngs=rngs),
    )

  def check_compatible(self, config: ModelConfig | ModelShape) -> None:
    _check_same_model(self.model_shape, _shape(config))


def _check_same_model(adapter: ModelShape, model: ModelShape, where: str = "") -> None:
  if adapter.differs_from(model):
    raise ValueError(
      f"{where}{': ' if where else ''}adapter was made for a model with "
      f"{adapter}, but this model has {model}"
    )


# ---------------------------------------------------------------------------- files


def save_adapter(adapter: Adapter, path: str, format: str = "orbax") -> None:  # pylint: disable=redefined-builtin
  """Writes the adapter as our orbax checkpoint or in the reference (PEFT) layout; both record
  the model shape in adapter.json so that `load_adapter(path)` needs no config, and the base
  model (`adapter.base_model`: name_or_path and revision, null if unknown), which the PEFT
  layout also writes as adapter_config.json's base_model_name_or_path and revision."""
  if format not in ("orbax", "peft"):
    raise ValueError(f"format={format!r}; expected 'orbax' or 'peft'")
  if format == "peft" and adapter.mapper is not None and adapter.mapper.per_head:
    raise ValueError(
      "the per-head mapper ablation has no reference-format (peft) equivalent; "
      "save it with format='orbax'"
    )
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  # peft: the reference files hold the settings; "lora"/"mapper" then say which must exist.
  meta = {
    "format": format,
    "model_shape": adapter.model_shape.as_dict(),
    "base_model": None if adapter.base_model is None else adapter.base_model.as_dict(),
    "lora": None
    if adapter.lora is None
    else {"rank": adapter.lora.rank, "alpha": adapter.lora.alpha},
    "mapper": None if adapter.mapper is None else _mapper_config(adapter.mapper),
  }
  if format == "orbax":
    from ps_jax.train.checkpoint import save_tree  # pylint: disable=import-outside-toplevel

    save_tree(
      os.path.join(path, "params"),
      jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(adapter))),
    )
  else:
    if adapter.lora is not None:
      _save_peft(adapter, os.path.join(path, PEFT_DIR))
    if adapter.mapper is not None:
      _save_reference_mapper(adapter.mapper, path)
  with open(os.path.join(path, META_FILE), "w") as f:
    json.dump(meta, f, indent=1)


def load_adapter(path: str, config: ModelConfig | None = None) -> Adapter:
  """Reads our orbax adapter or a reference release directory.

  Without `config` the model shape comes from the folder's adapter.json, or for a reference
  folder without one from its LoRA tensors. With `config` the adapter must fit that model: a
  recorded shape that differs is an error naming both.
  """
  path = os.path.abspath(path)
  meta_path = os.path.join(path, META_FILE)
  meta = _read_json(meta_path) if os.path.exists(meta_path) else None
  if meta is not None and not isinstance(meta, dict):
    raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
  given = None if config is None else ModelShape.of(config)
  recorded = base_model = None
  if meta is not None:
    recorded = ModelShape.from_dict(meta.get("model_shape"), meta_path)
    base_model = BaseModel.from_dict(meta.get("base_model"), meta_path)
    if given is not None:
      _check_same_model(recorded, given, path)
    fmt = meta.get("format", "orbax")  # files written before "format" existed are orbax
    if fmt == "orbax":
      return _load_orbax(path, meta, given or recorded, base_model)
    if fmt != "peft":
      raise ValueError(f"{meta_path}: format={fmt!r}; expected 'orbax' or 'peft'")
  has_lora = os.path.exists(os.path.join(path, PEFT_DIR, "adapter_config.json"))
  has_mapper = os.path.exists(os.path.join(path, MAPPER_FILE))
  if meta is not None:  # our export: the parts it wrote must all be there
    for part, present, name in (
      ("lora", has_lora, f"{PEFT_DIR}/adapter_config.json"),
      ("mapper", has_mapper, MAPPER_FILE),
    ):
      if meta.get(part) is not None and not present:
        raise FileNotFoundError(f"{path}: {META_FILE} records a {part} but {name} is missing")
  elif not (has_lora or has_mapper):
    raise FileNotFoundError(
      f"{path}: neither our {META_FILE} nor a reference {PEFT_DIR}/ or {MAPPER_FILE} found"
    )
  shape = given or recorded
  if shape is None:
    if not has_lora:
      raise ValueError(
        f"{path}: a {MAPPER_FILE} without {PEFT_DIR}/ or {META_FILE} does not say how many "
        "layers the base model has (the mapper's layer feature needs it); pass the model's "
        "config: load_adapter(path, model.config)"
      )
    shape = _infer_peft_shape(os.path.join(path, PEFT_DIR))
  lora = _load_peft(os.path.join(path, PEFT_DIR), shape) if has_lora else None
  mapper = _load_reference_mapper(path, shape) if has_mapper else None
  if base_model is None and has_lora and (meta is None or "base_model" not in meta):
    # A reference folder, or ours from before adapter.json named the base model: PEFT's own.
    peft_config = _read_json(os.path.join(path, PEFT_DIR, "adapter_config.json"))
    base_model = BaseModel.from_peft_config(peft_config)
  return Adapter(shape, mapper=mapper, lora=lora, base_model=base_model)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def _load_orbax(path: str, meta: dict, shape: ModelShape, base_model: BaseModel | None) -> Adapter:
  from ps_jax.train.checkpoint import restore_tree  # pylint: disable=import-outside-toplevel

  rngs = nnx.Rngs(0)
  m, lo = meta.get("mapper"), meta.get("lora")
  try:
    adapter = Adapter(
      shape,
      base_model=base_model,
      mapper=None
      if m is None
      else CacheMapper(
        shape.num_layers,
        shape.num_kv_heads,
        hidden_dim=int(m["hidden_dim"]),
        metadata_features=m["metadata_features"],
        per_head=bool(m.get("per_head", False)),
        rngs=rngs,
      ),
      lora=None
      if lo is None
      else LoRA(shape, rank=int(lo["rank"]), alpha=float(lo["alpha"]), rngs=rngs),
    )
  except (KeyError, TypeError) as e:
    raise ValueError(
      f"{os.path.join(path, META_FILE)}: malformed lora/mapper record ({type(e).__name__}: {e})"
    ) from e
  restored = restore_tree(os.path.join(path, "params"))
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
      raise ValueError(
        f"{source}: tensor {name} has shape {tuple(np.shape(got[key]))}, "
        f"expected {tuple(np.shape(value))}"
      )


def _mapper_config(mapper: CacheMapper) -> dict:
  return {
    "hidden_dim": mapper.hidden_dim,
    "metadata_features": mapper.metadata_features,
    "per_head": mapper.per_head,
  }


def _peft_key(layer: int, target: str, ab: str) -> str:
  return f"base_model.model.model.layers.{layer}.self_attn.{_PEFT_MODULE[target]}.lora_{ab}.weight"


def _save_peft(adapter: Adapter, folder: str) -> None:
  """PEFT's own layout: `PeftModel.from_pretrained(base, folder)` reads it; with a known base
  model, `AutoPeftModelForCausalLM.from_pretrained(folder)` also finds the base model."""
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
  base = adapter.base_model
  with open(os.path.join(folder, "adapter_config.json"), "w") as f:
    json.dump(
      {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None if base is None else base.name_or_path,
        "revision": None if base is None else base.revision,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "target_modules": [_PEFT_MODULE[t] for t in LORA_TARGETS],
      },
      f,
      indent=1,
    )


def _infer_peft_shape(folder: str) -> ModelShape:
  """The model shape a reference LoRA implies: layer count from its keys, widths from layer 0
  (every tensor is then checked against it). The head split stays unknown."""
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  file = os.path.join(folder, "adapter_model.safetensors")
  with safe_open(file, framework="numpy") as f:
    names = set(f.keys())
    layers = {_layer_of(n) for n in names} - {-1}
    widths = {}
    for t, ab, axis in (("q", "A", 1), ("q", "B", 0), ("k", "B", 0)):
      name = _peft_name(names, _peft_key(0, t, ab))
      if name is None:
        raise ValueError(
          f"{file}: no tensor {_peft_key(0, t, ab)!r} to infer the model shape "
          "from; pass the model's config: load_adapter(path, model.config)"
        )
      widths[t + ab] = int(f.get_slice(name).get_shape()[axis])
  return ModelShape(
    num_layers=max(layers) + 1, hidden_size=widths["qA"], q_size=widths["qB"], kv_size=widths["kB"]
  )


def _peft_name(names, key: str) -> str | None:
  # PEFT may save with or without the adapter name ("default") in the key.
  alt = key.replace(".weight", ".default.weight")
  return key if key in names else alt if alt in names else None


def _load_peft(folder: str, shape: ModelShape) -> LoRA:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  cfg = _read_json(os.path.join(folder, "adapter_config.json"))
  targets = set(cfg.get("target_modules") or [])
  if targets != set(_PEFT_MODULE.values()):
    raise ValueError(
      f"{folder}: LoRA target_modules {sorted(targets)}; ps_jax supports "
      f"exactly {sorted(_PEFT_MODULE.values())}"
    )
  rank = int(cfg["r"])
  alpha = float(cfg["lora_alpha"])
  if cfg.get("use_rslora"):
    alpha = alpha * rank**0.5  # rsLoRA scales by alpha / sqrt(r); fold it into alpha / r
  lora = LoRA(shape, rank=rank, alpha=alpha, rngs=nnx.Rngs(0))
  dims = _projection_dims(shape)
  with safe_open(os.path.join(folder, "adapter_model.safetensors"), framework="numpy") as f:
    names = set(f.keys())
    deeper = sorted(n for n in names if _layer_of(n) >= shape.num_layers)
    if deeper:
      raise ValueError(
        f"{folder}: LoRA has tensors for layer {_layer_of(deeper[0])} (e.g. "
        f"{deeper[0]!r}) but the model has {shape.num_layers} layers"
      )

    def get(key, want):
      name = _peft_name(names, key)
      if name is None:
        raise ValueError(f"{folder}: missing tensor {key!r}")
      x = f.get_tensor(name)
      if tuple(x.shape) != want:
        raise ValueError(
          f"{folder}: tensor {name!r} has shape {tuple(x.shape)}, expected {want} for this model"
        )
      return x

    for t in LORA_TARGETS:
      din, dout = dims[t]
      lora.a[t] = nnx.LoRAParam(
        jnp.asarray(
          np.stack([get(_peft_key(i, t, "A"), (rank, din)).T for i in range(shape.num_layers)]),
          jnp.float32,
        )
      )
      lora.b[t] = nnx.LoRAParam(
        jnp.asarray(
          np.stack([get(_peft_key(i, t, "B"), (dout, rank)).T for i in range(shape.num_layers)]),
          jnp.float32,
        )
      )
  return lora


def _layer_of(name: str) -> int:
  m = re.search(r"\.layers\.(\d+)\.", name)
  return int(m.group(1)) if m else -1


def _save_reference_mapper(mapper: CacheMapper, folder: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel

  if mapper.per_head:
    raise ValueError("the per-head mapper ablation has no reference-format equivalent")
  state = {
    "net.0.weight": torch.tensor(np.asarray(mapper.w1[...]).T.copy()),
    "net.0.bias": torch.tensor(np.asarray(mapper.b1[...])),
    "net.2.weight": torch.tensor(np.asarray(mapper.w2[...]).T.copy()),
    "net.2.bias": torch.tensor(np.asarray(mapper.b2[...])),
  }
  torch.save(state, os.path.join(folder, MAPPER_FILE))
  with open(os.path.join(folder, MAPPER_CONFIG), "w") as f:
    json.dump(
      {"hidden_dim": mapper.hidden_dim, "metadata_features": mapper.metadata_features}, f, indent=1
    )


def _read_mapper_state(file: str) -> dict:
  """The tensors of a torch state dict, unpickling nothing but tensors and plain values: a
  crafted file (one whose unpickling would call a function) is refused before it runs."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f"reading {file} (a torch state dict) needs torch: pip install 'ps_jax[test]' or torch"
    ) from e
  import pickle  # pylint: disable=import-outside-toplevel

  try:
    raw = torch.load(file, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
    raise ValueError(
      f"{file}: refused: not a plain torch state dict of tensors (only tensors "
      f"and plain values are read, nothing else is unpickled): {e}"
    ) from e
  if not isinstance(raw, dict):
    raise ValueError(f"{file}: expected a torch state dict, got {type(raw).__name__}")
  return raw


def _load_reference_mapper(folder: str, shape: ModelShape) -> CacheMapper:
  file = os.path.join(folder, MAPPER_FILE)
  cfg_path = os.path.join(folder, MAPPER_CONFIG)
  cfg = _read_json(cfg_path) if os.path.exists(cfg_path) else {}
  raw = _read_mapper_state(file)
  state = raw.get("state_dict", raw)
  cfg = {**{k: raw[k] for k in ("hidden_dim", "metadata_features") if k in raw}, **cfg}
  mapper = CacheMapper(
    shape.num_layers,
    shape.num_kv_heads,
    hidden_dim=int(cfg.get("hidden_dim", 32)),
    metadata_features=cfg.get("metadata_features", "both"),
    rngs=nnx.Rngs(0),
  )
  import torch  # pylint: disable=import-outside-toplevel

  for ours, theirs, transpose in (
    ("w1", "net.0.weight", True),
    ("b1", "net.0.bias", False),
    ("w2", "net.2.weight", True),
    ("b2", "net.2.bias", False),
  ):
    if not isinstance(state, dict) or theirs not in state:
      raise ValueError(f"{file}: missing tensor {theirs!r}")
    if not isinstance(state[theirs], torch.Tensor):
      raise ValueError(f"{file}: {theirs!r} is a {type(state[theirs]).__name__}, not a tensor")
    x = state[theirs].detach().float().numpy()
    x = x.T if transpose else x
    expected = getattr(mapper, ours).shape
    if x.shape != expected:
      raise ValueError(
        f"{file}: tensor {theirs!r} has shape "
        f"{tuple(x.T.shape if transpose else x.shape)}, expected "
        f"{tuple(expected[::-1] if transpose else expected)}"
      )
    setattr(mapper, ours, MapperParam(jnp.asarray(x)))
  return mapper
