"""launch.export: train the tiny config for 2 steps, export orbax and peft, read both back.

The exported adapters must give the same synthesis logits as the adapter rebuilt from the
training checkpoint (orbax: bit-identical; peft: <= 1e-6). A peft export names its base model
(adapter_config.json's base_model_name_or_path), and peft run on that model with the exported
LoRA reproduces ps_jax's logits.
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

import helpers
import ps_jax as ps
from ps_jax.adapter import BaseModel
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
      "--config.train.eval_batches=0",  # no held-out loss: one compile fewer
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


def test_random_init_run_names_no_base_model(run):
  """The tiny run's model is random (random_init): no published model to name, so the exports
  record none (not the SmolLM2 whose tokenizer and vocabulary it borrows)."""
  _, outs = run
  with open(os.path.join(outs["peft"], "judger_lora", "adapter_config.json")) as f:
    peft_config = json.load(f)
  assert peft_config["base_model_name_or_path"] is None and peft_config["revision"] is None
  for out in outs.values():
    for name in ("adapter.json", ex.EXPORT_INFO):
      with open(os.path.join(out, name)) as f:
        assert json.load(f)["base_model"] is None, (out, name)
    assert ps.load_adapter(out).base_model is None


def _fake_run(workdir: str, source: str, adapter_options: dict, fill_seed: int) -> ps.Adapter:
  """A training workdir as launch.train leaves it (config.json, one checkpoint at step 1) for
  the model at `source`, whose adapter has every weight random and non-zero (LoRA B included),
  without training. Returns that adapter."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from ps_jax.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from ps_jax.train.step import (  # pylint: disable=import-outside-toplevel
    OptimizerConfig,
    init_state,
    make_optimizer,
  )

  os.makedirs(workdir)
  with open(os.path.join(workdir, ex.CONFIG_FILE), "w") as f:
    json.dump({"model": {"source": source}, "adapter": adapter_options, "optimizer": {}}, f)
  adapter = ps.Adapter.create(ps.io.load_config(source), **adapter_options)
  graphdef, state = nnx.split(adapter)
  rng = np.random.default_rng(fill_seed)
  pure = jax.tree.map(
    lambda x: (0.2 * rng.standard_normal(np.shape(x))).astype(np.float32),
    nnx.to_pure_dict(state),
  )
  nnx.replace_by_pure_dict(state, pure)
  adapter = nnx.merge(graphdef, state)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
  ckpt.save(1, init_state(adapter, make_optimizer(OptimizerConfig())), {})
  ckpt.manager.close()
  return adapter


def test_peft_export_names_its_base_model_and_peft_reproduces_the_logits(tmp_path):
  """A run on a local transformers folder exported as peft: adapter_config.json names that
  folder as base_model_name_or_path, and peft (PeftModel on AutoModelForCausalLM of the folder,
  and AutoPeftModelForCausalLM finding the base model by itself) gives the logits of ps_jax's
  forward with the exported LoRA on every token, to 1e-4 in fp32."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from peft import (  # pylint: disable=import-outside-toplevel
    AutoPeftModelForCausalLM,
    PeftModel,
  )
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  folder = helpers.tiny_hf_model("llama", tmp_path / "base", seed=7).path
  options = {"rank": 4, "alpha": 8.0, "seed": 3}
  trained = _fake_run(str(tmp_path / "run"), folder, options, fill_seed=11)
  out = str(tmp_path / "export")
  info = ex.export_adapter(str(tmp_path / "run"), out, "peft")

  expected = {"name_or_path": os.path.abspath(folder), "revision": None}
  assert info["base_model"] == expected
  with open(os.path.join(out, "judger_lora", "adapter_config.json")) as f:
    peft_config = json.load(f)
  assert peft_config["base_model_name_or_path"] == os.path.abspath(folder)
  assert peft_config["revision"] is None
  with open(os.path.join(out, "adapter.json")) as f:
    assert json.load(f)["base_model"] == expected
  loaded = ps.load_adapter(out)
  assert loaded.base_model == BaseModel(os.path.abspath(folder))
  np.testing.assert_array_equal(
    np.asarray(loaded.lora.b["v"][...]), np.asarray(trained.lora.b["v"][...])
  )
  assert float(np.abs(np.asarray(loaded.lora.b["q"][...])).min()) > 0  # B random, non-zero

  model, _ = ps.load(folder)
  assert model.config.name_or_path == os.path.abspath(folder)
  tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 12))
  ours = np.asarray(
    model(jnp.asarray(tokens), lora=loaded.lora.weights(jnp.float32), lora_scale=loaded.lora.scale)[
      0
    ]
  )
  without_lora = np.asarray(model(jnp.asarray(tokens))[0])

  ids = torch.tensor(tokens)
  base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  peft_model = PeftModel.from_pretrained(base, os.path.join(out, "judger_lora")).eval()
  auto = AutoPeftModelForCausalLM.from_pretrained(
    os.path.join(out, "judger_lora"), dtype=torch.float32
  ).eval()
  with torch.no_grad():
    theirs = peft_model(ids).logits.numpy()
    theirs_auto = auto(ids).logits.numpy()
    with peft_model.disable_adapter():
      theirs_without = peft_model(ids).logits.numpy()
  d = float(np.abs(ours - theirs).max())
  d_auto = float(np.abs(ours - theirs_auto).max())
  d_base = float(np.abs(without_lora - theirs_without).max())
  lora_effect = float(np.abs(ours - without_lora).max())
  print(
    f"\nexported LoRA, ps_jax vs peft logits max diff {d:.2e} (AutoPeftModel {d_auto:.2e}; "
    f"base model {d_base:.2e}); the LoRA moves the logits by up to {lora_effect:.3f}"
  )
  assert d <= 1e-4 and d_auto <= 1e-4 and d_base <= 1e-4
  assert lora_effect > 1e-1  # the comparison is not vacuous


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
