"""Adapter files: orbax and reference (PEFT + cache_mapper.pt) round trips are exact with or
without the model config, partial reference folders load as identity mapper / no LoRA, our
PEFT export is readable by peft, and a crafted cache_mapper.pt is refused without running.
"""

from __future__ import annotations

import copy
import json
import re
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import helpers
import ps_jax as ps
import torch_reference as tr
from ps_jax.adapter import BaseModel, ModelShape
from synth_helpers import logits_np, max_diff, random_adapter, report, valid_rows_diff

FAMILY = "llama"


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
  tiny_hf, model = tiny(FAMILY)
  adapter = random_adapter(model.config, seed=3, rank=4)
  root = tmp_path_factory.mktemp("adapter_files")
  ps.save_adapter(adapter, str(root / "orbax"), format="orbax")
  ps.save_adapter(adapter, str(root / "peft"), format="peft")
  ids = helpers.random_prompts([7, 12, 4, 5, 6, 4], seed=61)
  branches = ps.encode_branches(model, None, [ids[:3], ids[3:4]])
  tokens, lengths = helpers.right_pad(ids[4:])
  return dict(
    tiny_hf=tiny_hf,
    model=model,
    adapter=adapter,
    root=root,
    ids=ids,
    branches=branches,
    tokens=tokens,
    lengths=lengths,
  )


def _logits(s, adapter, method="parallel_synthesis"):
  return logits_np(
    s["model"], s["branches"], s["tokens"], method, adapter=adapter, lengths=s["lengths"]
  )


def _pure(adapter):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(adapter)))


@pytest.mark.parametrize("with_config", [True, False])
@pytest.mark.parametrize("fmt", ["orbax", "peft"])
def test_round_trip_is_exact(setup, fmt, with_config):
  """adapter.json records the model shape, so the config is optional."""
  s = setup
  args = (s["model"].config,) if with_config else ()
  loaded = ps.load_adapter(str(s["root"] / fmt), *args)
  assert loaded.model_shape == ModelShape.of(s["model"].config)
  assert loaded.base_model == s["adapter"].base_model == BaseModel(s["tiny_hf"].path)
  jax.tree.map(np.testing.assert_array_equal, _pure(loaded), _pure(s["adapter"]))
  assert loaded.lora.rank == 4 and loaded.lora.scale == s["adapter"].lora.scale == 2.0
  d = max_diff(_logits(s, loaded), _logits(s, s["adapter"]))
  report(f"{fmt} save/load ({'with' if with_config else 'without'} config): logits max diff", d)
  assert d == 0.0


def test_reference_folder_without_adapter_json_infers_the_shape(setup, tmp_path):
  """The authors' release has no adapter.json: the LoRA tensors give layers and widths (not the
  head split); the adapter then runs on a model of those widths, with the same logits."""
  s = setup
  shutil.copytree(s["root"] / "peft", tmp_path, dirs_exist_ok=True)
  (tmp_path / "adapter.json").unlink()
  loaded = ps.load_adapter(str(tmp_path))
  c = s["model"].config
  assert loaded.model_shape.as_dict() == {
    "num_layers": c.num_layers,
    "hidden_size": c.hidden_size,
    "q_size": c.num_heads * c.head_dim,
    "kv_size": c.num_kv_heads * c.head_dim,
  }
  assert loaded.mapper.num_kv_heads is None  # shared over heads: broadcast in the forward
  assert loaded.base_model == s["adapter"].base_model  # PEFT's base_model_name_or_path
  jax.tree.map(np.testing.assert_array_equal, _pure(loaded), _pure(s["adapter"]))
  d = max_diff(_logits(s, loaded), _logits(s, s["adapter"]))
  report("reference folder, shape inferred from the LoRA: logits max diff", d)
  assert d == 0.0
  # With the config the full shape is kept (and checked against the tensors).
  assert ps.load_adapter(str(tmp_path), c).model_shape == ModelShape.of(c)


def test_base_model_record(setup, tmp_path):
  """adapter.json and PEFT's adapter_config.json name the base model (hub id and revision here);
  an adapter of a bare shape names none (null); a malformed record is refused by name."""
  s = setup
  lora = s["adapter"].lora
  named = ps.Adapter(
    s["adapter"].model_shape,
    mapper=None,
    lora=lora,
    base_model=BaseModel("org/tiny-llama", "0123456789abcdef0123456789abcdef01234567"),
  )
  bare = ps.Adapter(s["adapter"].model_shape, mapper=None, lora=lora)
  assert bare.base_model is None
  for adapter in (named, bare):
    for fmt in ("orbax", "peft"):
      folder = tmp_path / f"{fmt}_{adapter.base_model is not None}"
      ps.save_adapter(adapter, str(folder), format=fmt)
      assert ps.load_adapter(str(folder)).base_model == adapter.base_model
  with open(tmp_path / "peft_True" / "judger_lora" / "adapter_config.json") as f:
    peft_config = json.load(f)
  assert peft_config["base_model_name_or_path"] == "org/tiny-llama"
  assert peft_config["revision"] == named.base_model.revision
  with open(tmp_path / "peft_False" / "judger_lora" / "adapter_config.json") as f:
    peft_config = json.load(f)
  assert peft_config["base_model_name_or_path"] is None and peft_config["revision"] is None
  meta_path = tmp_path / "orbax_True" / "adapter.json"
  meta = json.loads(meta_path.read_text())
  meta["base_model"] = {"name_or_path": 3}
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=re.escape(str(meta_path)) + ": base_model"):
    ps.load_adapter(str(tmp_path / "orbax_True"))


class _Hostile:
  """Unpickling this calls open(marker, "w"): stands for any code a crafted file could run."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("with_config", [True, False])
def test_crafted_mapper_file_is_refused_and_runs_nothing(setup, tmp_path, with_config):
  s = setup
  folder = tmp_path / "adapter"
  shutil.copytree(s["root"] / "peft", folder)
  marker = tmp_path / "marker"
  state = {k: v for k, v in torch.load(folder / "cache_mapper.pt").items()}
  state["net.0.bias"] = _Hostile(str(marker))
  torch.save(state, folder / "cache_mapper.pt")
  args = (s["model"].config,) if with_config else ()
  with pytest.raises(ValueError, match=re.escape(str(folder / "cache_mapper.pt")) + ": refused"):
    ps.load_adapter(str(folder), *args)
  assert not marker.exists()
  # The file is hostile indeed: unrestricted unpickling runs its payload.
  torch.load(folder / "cache_mapper.pt", weights_only=False)["net.0.bias"].close()
  assert marker.exists()


def test_reference_dir_with_only_lora(setup, tmp_path):
  s = setup
  shutil.copytree(s["root"] / "peft" / "judger_lora", tmp_path / "judger_lora")
  loaded = ps.load_adapter(str(tmp_path), s["model"].config)
  assert loaded.mapper is None and loaded.lora is not None
  # parallel_synthesis with no mapper == lora_only with the full adapter; != the full method.
  ours = _logits(s, loaded)
  assert max_diff(ours, _logits(s, s["adapter"], "lora_only")) == 0.0
  assert valid_rows_diff(ours, _logits(s, s["adapter"]), s["lengths"]) > 1e-2


def test_reference_dir_with_only_mapper(setup, tmp_path):
  s = setup
  for f in ("cache_mapper.pt", "cache_mapper_config.json"):
    shutil.copy(s["root"] / "peft" / f, tmp_path / f)
  loaded = ps.load_adapter(str(tmp_path), s["model"].config)
  assert loaded.lora is None and loaded.mapper is not None
  ours = _logits(s, loaded)
  assert max_diff(ours, _logits(s, s["adapter"], "mapper_only")) == 0.0
  assert valid_rows_diff(ours, _logits(s, s["adapter"]), s["lengths"]) > 1e-2


def test_peft_export_is_read_by_peft_and_torch_agrees(setup):
  """Our format="peft" export loaded by peft itself + our cache_mapper.pt loaded into the torch
  reference mapper reproduce ps_jax's parallel_synthesis logits."""
  from peft import PeftModel  # pylint: disable=import-outside-toplevel

  s = setup
  folder = s["root"] / "peft"
  peft_model = PeftModel.from_pretrained(
    copy.deepcopy(s["tiny_hf"].hf), str(folder / "judger_lora")
  ).eval()
  mapper = tr.RefMapper()
  mapper.load_state_dict(torch.load(folder / "cache_mapper.pt"))
  ours = _logits(s, s["adapter"])
  ids = s["ids"]
  d = 0.0
  for b, (ex, synth) in enumerate([(ids[:3], ids[4]), (ids[3:4], ids[5])]):
    with peft_model.disable_adapter():
      kvs = tr.fixed_text_kv(peft_model, ex)
    ref = tr.synth_logits(peft_model, kvs, [len(x) for x in ex], synth, mapper=mapper)
    d = max(d, max_diff(ours[b, : len(synth)], ref))
  report("ps_jax-exported PEFT+mapper run by peft/torch vs ps_jax", d)
  assert d <= 1e-4
