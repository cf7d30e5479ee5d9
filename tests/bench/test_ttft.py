"""The TTFT harness (ps_jax.bench.ttft) on tiny models: inputs, outputs, launcher.

No wall-clock thresholds: these tests check what is measured and written, not how fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import ps_jax
from ps_jax.bench import ttft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELL_KEYS = {
  "num_branches",
  "branch_length",
  "branch_tokens",
  "branch_bucket",
  "branch_slots",
  "synth_prompt_tokens",
  "text_prompt_tokens",
  "ps_max_position",
  "paths",
  "ratios",
  "load_average_1m",
}
RESULT_KEYS = {
  "benchmark",
  "model",
  "model_config",
  "dtype",
  "config",
  "environment",
  "compile_check",
  "cells",
  "targets",
  "wall_s",
}
OK_PATH_KEYS = {
  "status",
  "ttft_s",
  "repeats",
  "reduced_repeats",
  "warmup_s",
  "parts_s",
  "first_token",
  "compile_events_s",
}


def tiny_model(max_positions: int = 4096):
  """The tiny random model of the issue (no tokenizer)."""
  return ps_jax.Transformer(
    ps_jax.ModelConfig(
      family="llama",
      vocab_size=128,
      hidden_size=32,
      intermediate_size=64,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      max_position_embeddings=max_positions,
      bos_token_id=1,
      eos_token_ids=(2,),
    ),
    rngs=flax.nnx.Rngs(0),
  )


def small_config(**overrides) -> ttft.TTFTConfig:
  kwargs = dict(
    num_branches=(2, 3),
    branch_lengths=(16,),
    repeats=2,
    min_repeats=1,
    warmup=1,
    compile_check_lengths=(20, 24),
    compile_check_branches=2,
  )
  kwargs.update(overrides)
  return ttft.TTFTConfig(**kwargs)


def check_outputs(result, paths):
  assert set(paths) == {"json", "md", "png"}
  with open(paths["json"]) as f:
    data = json.load(f)
  assert RESULT_KEYS <= set(data)
  env = data["environment"]
  assert {"cpu_model", "cpu_cores", "versions", "jax_backend"} <= set(env)
  assert env["versions"]["jax"]
  assert len(data["cells"]) == len(result["cells"])
  for cell in data["cells"]:
    assert CELL_KEYS <= set(cell), set(cell) ^ CELL_KEYS
    assert set(cell["paths"]) == set(ttft.PATHS)
    for name in ("parallel_synthesis", "floor"):
      p = cell["paths"][name]
      assert OK_PATH_KEYS <= set(p)
      assert p["ttft_s"]["n"] == p["repeats"] >= 1
      assert p["ttft_s"]["min"] <= p["ttft_s"]["median"] <= p["ttft_s"]["max"]
      assert p["memory"]["kind"] == "xla_memory_analysis"
      assert p["memory"]["working_bytes"] > 0
    assert set(cell["paths"]["parallel_synthesis"]["parts_s"]) == {"build_prefix", "prefill"}
    assert {"text_over_ps", "ps_over_floor", "torch_text_over_ps"} <= set(cell["ratios"])
  assert {"text_over_ps", "ps_over_floor_max"} <= set(data["targets"])
  with open(paths["md"]) as f:
    md = f.read()
  assert "| N | L |" in md and "PS/floor" in md and "## Targets" in md
  assert md.count("\n| ") == len(data["cells"]) + 1  # header + one row per cell
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return data


def test_ids_only_tiny_model_writes_json_markdown_png(tmp_path):
  model = tiny_model(max_positions=256)
  # N=3, L=64: 64 + 3 * (3 + 64) = 265 text tokens > 256 positions -> text is skipped.
  # N=3, L=16: 121 text tokens > text_max_tokens -> compiled ahead and timed once.
  config = small_config(num_branches=(3,), branch_lengths=(16, 64), text_max_tokens=100)
  result = ttft.run(model, None, config, log=lambda s: None)
  data = check_outputs(result, ttft.write(result, str(tmp_path / "ttft")))
  cells = {(c["num_branches"], c["branch_length"]): c for c in data["cells"]}
  assert set(cells) == {(3, 16), (3, 64)}
  for (n, length), c in cells.items():
    assert c["text_prompt_tokens"] == config.synth_prompt_tokens + n * (3 + length)
    assert c["synth_prompt_tokens"] == config.synth_prompt_tokens
    assert c["branch_bucket"] == 4 and c["branch_slots"] == length  # N=3 -> bucket 4
    assert c["paths"]["torch_text"]["status"] == "skipped"
  over = cells[(3, 64)]["paths"]["text"]
  assert (
    over["status"] == "skipped" and "exceeds the model's 256-position context" in over["reason"]
  )
  assert cells[(3, 64)]["ratios"]["text_over_ps"] is None
  single = cells[(3, 16)]["paths"]["text"]
  assert single["status"] == "ok" and single["protocol"] == "single"
  assert single["repeats"] == 1 and single["warmup_s"] == []
  assert single["memory"]["working_bytes"] > 0
  assert cells[(3, 16)]["ratios"]["text_over_ps"] > 0
  assert cells[(3, 16)]["paths"]["parallel_synthesis"]["protocol"] == "full"
  check = data["compile_check"]
  assert check["compiled_once"] and check["length_buckets"] == [32]
  assert all(v <= 1 for v in check["programs_compiled"].values())


def test_replicate_branches_equals_encode_branches():
  model = tiny_model()
  ids = helpers.random_prompts([20], seed=3, high=128)[0]
  one = ps_jax.encode_branches(model, None, [[ids]])
  for n in (3,):
    want = ps_jax.encode_branches(model, None, [[ids] * n])
    got = ttft.replicate_branches(one, n)
    assert got.token_ids == want.token_ids
    assert got.caches.k.shape == want.caches.k.shape
    np.testing.assert_allclose(got.caches.k, want.caches.k, atol=1e-5)
    np.testing.assert_allclose(got.caches.v, want.caches.v, atol=1e-5)
    np.testing.assert_array_equal(got.caches.lengths, want.caches.lengths)
    np.testing.assert_array_equal(got.caches.positions, want.caches.positions)
    assert got.caches.model_fingerprint == want.caches.model_fingerprint


def test_text_prompt_splices_exact_branch_ids():
  model = tiny_model()
  tok = helpers.tiny_tokenizer()
  config = ttft.TTFTConfig()
  ids = ttft.branch_ids(model, tok, 40, config)
  assert len(ids) == 40
  prompts = ttft.prompts_for(model, tok, 3, config)
  text = prompts.text_ids([ids] * 3)
  assert len(text) == sum(len(p) for p in prompts.text_pieces) + 3 * 40
  start = len(prompts.text_pieces[0])
  assert text[start : start + 40] == ids
  decoded = tok.decode(text)
  for i in (1, 2, 3):
    assert f"Agent {i}:" in decoded
  assert config.question in decoded
  latent = ps_jax.generation.encode_prompts(
    tok, [ps_jax.prompts.PromptTemplates().latent_synthesizer_messages(config.question)]
  )[0]
  assert prompts.latent == latent
  with pytest.raises(ValueError, match="2 branches for 3 slots"):
    prompts.text_ids([ids] * 2)
  rand = ttft.branch_ids(model, tok, 50, ttft.TTFTConfig(branch_source="random"))
  assert len(rand) == 50 and not set(rand) & ttft.special_ids(model, tok)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  """A tiny transformers llama (positions 4096) with a tokenizer saved beside it."""
  path = tmp_path_factory.mktemp("ttft_llama")
  t = helpers.tiny_hf_model("llama", path, max_position_embeddings=4096)
  helpers.tiny_tokenizer(path)
  return t


def test_tokenizer_and_torch_reference(tiny_folder, tmp_path):
  model, tok = ps_jax.load(tiny_folder.path, dtype=jnp.float32)
  assert tok is not None
  result = ttft.run(
    model,
    tok,
    small_config(num_branches=(2,)),
    torch_model=tiny_folder.hf,
    model_name="tiny-llama",
    log=lambda s: None,
  )
  data = check_outputs(result, ttft.write(result, str(tmp_path / "ttft")))
  for cell in data["cells"]:
    for name in ttft.PATHS:
      assert cell["paths"][name]["status"] == "ok", (name, cell["paths"][name])
    assert cell["paths"]["torch_text"]["memory"]["kind"] == "rss_peak_delta"
    # Same ids, same weights: the ps_jax text path and torch agree on the first token.
    assert cell["text_first_token_matches_torch"]
    assert cell["library_text_prompt_tokens"] > 0
    assert all(r is not None for r in cell["ratios"].values())
  check = data["compile_check"]
  assert check["api"] == "ps_jax.synthesize" and check["compiled_once"]
  assert data["environment"]["torch_threads"] >= 1


def test_config_and_quick_mode():
  sys.path.insert(0, ROOT)
  from configs import bench_ttft  # pylint: disable=import-outside-toplevel

  full = ttft.config_from_dict(bench_ttft.get_config().to_dict())
  assert tuple(full.num_branches) == (2, 3, 4, 8)
  assert tuple(full.branch_lengths) == (128, 512, 2048)
  assert full.repeats >= 5
  quick = bench_ttft.get_config("quick=true")
  assert quick.quick and tuple(quick.branch_lengths) == bench_ttft.QUICK["branch_lengths"]
  assert quick.output.startswith("/tmp/")
  with pytest.raises(ValueError, match="min_repeats"):
    ttft.TTFTConfig(repeats=2, min_repeats=3)
  with pytest.raises(ValueError, match="above_max"):
    ttft.TTFTConfig(above_max="sometimes")


@pytest.mark.slow  # a subprocess: imports jax, torch and transformers, compiles afresh
def test_launcher_on_a_tiny_folder(tiny_folder, tmp_path):
  """`python -m launch.bench_ttft` end to end (quick mode, a tiny model folder)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  stem = str(tmp_path / "out" / "ttft")
  cmd = [
    sys.executable,
    "-m",
    "launch.bench_ttft",
    "--config",
    f"configs/bench_ttft.py:model={tiny_folder.path}",
    "--config.quick=True",
    f"--config.output={stem}",
    "--config.branch_lengths=(16,)",
    "--config.repeats=1",
    "--config.min_repeats=1",
    "--config.compile_check_lengths=(20,24)",
  ]
  proc = subprocess.run(
    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(stem + ".json") as f:
    data = json.load(f)
  assert [(c["num_branches"], c["branch_length"]) for c in data["cells"]] == [(2, 16), (3, 16)]
  assert data["config"]["repeats"] == 1  # overridden on the command line
  assert data["config"]["path_budget_s"] == 60.0 and data["config"]["warmup"] == 1
  assert all(c["paths"]["torch_text"]["status"] == "ok" for c in data["cells"])
  assert os.path.exists(stem + ".md") and os.path.exists(stem + ".png")
