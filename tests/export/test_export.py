"""launch.export: train the tiny config for 2 steps, export orbax and peft, read both back.

The exported adapters must give the same synthesis logits as the adapter rebuilt from the
training checkpoint (orbax: bit-identical; peft: <= 1e-6), and the PEFT folder must load in
`peft` on a transformers Llama of the same shape with the same LoRA weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ps_jax as ps
from ps_jax.train import export as ex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One CPU device for the subprocesses: tests/conftest.py fakes 8, and the tiny config's
# global batch of 2 cannot be split over 8 devices.
pytestmark = pytest.mark.slow  # a real (tiny) training run in a subprocess

ENV = {
  **os.environ,
  "JAX_PLATFORMS": "cpu",
  "XLA_FLAGS": " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ),
}


def _run(args, timeout=900):
  out = subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, f"{args}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step tiny training run and its orbax and peft exports (the CLI, as a user runs it)."""
  base = tmp_path_factory.mktemp("export")
  workdir = str(base / "run")
  _run(
    [
      "launch.train",
      "--config",
      "configs/tiny.py",
      "--workdir",
      workdir,
      "--config.train.num_steps=2",
      "--config.checkpoint.every_steps=2",
    ]
  )
  if not os.path.exists(os.path.join(workdir, "config.json")):  # older launch.train
    sys.path.insert(0, ROOT)
    from configs import tiny  # pylint: disable=import-outside-toplevel

    c = tiny.get_config()
    c.train.num_steps, c.checkpoint.every_steps = 2, 2
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json())
  outs = {fmt: str(base / fmt) for fmt in ex.FORMATS}
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "launch.export", "--workdir", workdir, "--format", fmt, "--out", out],
      cwd=ROOT,
      env=ENV,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for fmt, out in outs.items()
  ]
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, f"{p.args}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
  return workdir, outs


@pytest.fixture(scope="module")
def model_tok(run):
  """The run's model, built as launch.train builds it (random tiny shape, seed 0)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  info = ex.read_run(run[0])
  return (
    ps.Transformer(info.model_config(), rngs=nnx.Rngs(0)),
    ps.io.load_tokenizer(info.model_source),
  )


@pytest.fixture(scope="module")
def reference(run, model_tok):
  """(adapter rebuilt from the checkpoint, branches, synthesizer tokens, its logits)."""
  model, tok = model_tok
  adapter, step = ex.adapter_from_checkpoint(run[0])
  assert step == 2
  branches = ps.encode_branches(
    model,
    tok,
    [
      ["Ann's code is 4821.", "Bob's code is 1934."],
      ["Part 1: red.", "Part 2: fox.", "Part 3: ran."],
    ],
  )
  tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 12))
  logits = ps.synthesis_logits(
    model, branches, tokens, method="parallel_synthesis", adapter=adapter
  )
  return adapter, branches, tokens, np.asarray(logits)


def test_checkpoint_adapter_is_trained(reference, model_tok):
  """Guards the comparisons below against a vacuous (identity) adapter."""
  adapter, branches, tokens, logits = reference
  assert max(float(np.abs(np.asarray(adapter.lora.b[t][...])).max()) for t in "qkvo") > 0
  assert float(np.abs(np.asarray(adapter.mapper.w2[...])).max()) > 0
  pcw = np.asarray(ps.synthesis_logits(model_tok[0], branches, tokens, method="pcw"))
  assert np.abs(logits - pcw).max() > 1e-6


@pytest.mark.parametrize("fmt,tol", [("orbax", 0.0), ("peft", 1e-6)])
def test_export_round_trip(run, model_tok, reference, fmt, tol):
  workdir, outs = run
  model, _ = model_tok
  _, branches, tokens, expected = reference
  loaded = ps.load_adapter(outs[fmt], model.config)
  got = np.asarray(
    ps.synthesis_logits(model, branches, tokens, method="parallel_synthesis", adapter=loaded)
  )
  assert np.abs(got - expected).max() <= tol
  with open(os.path.join(outs[fmt], ex.EXPORT_INFO)) as f:
    info = json.load(f)
  assert info["step"] == 2 and info["format"] == fmt
  assert info["workdir"] == os.path.abspath(workdir)


def test_layouts(run):
  _, outs = run
  assert os.path.exists(os.path.join(outs["orbax"], "adapter.json"))
  for name in (
    "judger_lora/adapter_config.json",
    "judger_lora/adapter_model.safetensors",
    "cache_mapper.pt",
    "cache_mapper_config.json",
  ):
    assert os.path.exists(os.path.join(outs["peft"], name)), name


def test_peft_folder_loads_in_peft(run, reference):
  """PeftModel.from_pretrained on a transformers Llama of the run's shape reads our LoRA."""
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  transformers = pytest.importorskip("transformers")
  adapter = reference[0]
  config = ex.read_run(run[0]).model_config()
  hf_config = transformers.LlamaConfig(
    vocab_size=128,
    hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    num_key_value_heads=config.num_kv_heads,
    head_dim=config.head_dim,
  )
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(hf_config)
  model = peft.PeftModel.from_pretrained(hf, os.path.join(run[1]["peft"], "judger_lora"))
  layers = model.base_model.model.model.layers
  for i, layer in enumerate(layers):
    for t, name in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
      proj = getattr(layer.self_attn, name)
      a = proj.lora_A["default"].weight.detach().numpy()  # [r, in]
      b = proj.lora_B["default"].weight.detach().numpy()  # [out, r]
      np.testing.assert_array_equal(a, np.asarray(adapter.lora.a[t][...])[i].T)
      np.testing.assert_array_equal(b, np.asarray(adapter.lora.b[t][...])[i].T)
      assert proj.scaling["default"] == pytest.approx(adapter.lora.scale)
  # The LoRA changes the forward (B is trained, so not zero).
  ids = torch.tensor([[1, 5, 9, 3]])
  with torch.no_grad():
    with_lora = model(ids).logits
    with model.disable_adapter():
      without = model(ids).logits
  assert (with_lora - without).abs().max() > 0


def test_falls_back_past_a_corrupt_checkpoint(run, tmp_path, reference):
  """A newer checkpoint that does not restore is skipped; --step picks one explicitly."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run[0], workdir)
  bad = os.path.join(workdir, "checkpoints", "4")
  shutil.copytree(os.path.join(workdir, "checkpoints", "2"), bad)
  shutil.rmtree(os.path.join(bad, "state"))
  adapter, step = ex.adapter_from_checkpoint(workdir)
  assert step == 2
  np.testing.assert_array_equal(
    np.asarray(adapter.lora.b["q"][...]), np.asarray(reference[0].lora.b["q"][...])
  )
  with pytest.raises(ValueError, match="step 4 is unreadable"):
    ex.adapter_from_checkpoint(workdir, step=4)
  with pytest.raises(ValueError, match="no checkpoint at step 3"):
    ex.adapter_from_checkpoint(workdir, step=3)


def test_errors(run, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    ex.adapter_from_checkpoint(str(tmp_path))
  shutil.copy(os.path.join(run[0], "config.json"), tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    ex.adapter_from_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match="format="):
    ex.export_adapter(run[0], str(tmp_path / "x"), "safetensors")
  # An existing export is not overwritten unless asked; a foreign folder never is.
  with pytest.raises(FileExistsError, match="overwrite"):
    ex.export_adapter(run[0], run[1]["orbax"], "orbax")
  other = tmp_path / "mine"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="refusing"):
    ex.export_adapter(run[0], str(other), "orbax", overwrite=True)
  assert (other / "notes.txt").exists()


def test_overwrite_replaces_an_export(run, tmp_path, model_tok, reference):
  out = str(tmp_path / "e")
  ex.export_adapter(run[0], out, "peft")
  ex.export_adapter(run[0], out, "orbax", overwrite=True)  # peft files are gone
  assert not os.path.exists(os.path.join(out, "judger_lora"))
  loaded = ps.load_adapter(out, model_tok[0].config)
  np.testing.assert_array_equal(
    np.asarray(loaded.mapper.w1[...]), np.asarray(reference[0].mapper.w1[...])
  )


def test_run_config_errors(tmp_path):
  with pytest.raises(ValueError, match="not a training run config"):
    ex.RunInfo.from_dict({"adapter": {}}, where="c.json")
  with pytest.raises(ValueError, match="not a training run config"):
    ex.RunInfo.from_dict({"model": {"source": "x"}, "adapter": {"no_such_option": 1}})
  info = ex.RunInfo.from_dict(
    {
      "model": {
        "source": "smollm2-135m-instruct",
        "random_init": True,
        "random_shape": {"num_layers": 2},
      }
    }
  )
  assert info.model_config().num_layers == 2
  assert dataclasses.asdict(info.adapter)["rank"] == 16
