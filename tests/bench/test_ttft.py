"""The TTFT harness (ps_jax.bench.ttft) on tiny models: inputs, outputs, targets, launcher.

No wall-clock thresholds: these tests check what is measured and written, not how fast.
"""

from __future__ import annotations

import dataclasses
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
from ps_jax.bench import checks, inputs, ttft, ttft_report
from ps_jax.model import DEFAULT_PREFILL, PrefillConfig

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
  "first_tokens_agree",
  "load_average_1m",
}
RESULT_KEYS = {
  "benchmark",
  "model",
  "model_config",
  "dtype",
  "config",
  "environment",
  "prefill",
  "parity",
  "compile_check",
  "forward_prefill",
  "cells",
  "targets",
  "wall_s",
}
OK_PATH_KEYS = {
  "status",
  "seconds",
  "repeats",
  "reduced_repeats",
  "warmup_s",
  "parts_s",
  "first_token",
  "first_token_stable",
  "compile_events_s",
}
JAX_PATHS = ("text", "text_floor", "parallel_synthesis", "ps_floor")


def tiny_model(max_positions: int = 4096):
  """A tiny random llama (no tokenizer)."""
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
  assert RESULT_KEYS <= set(data), RESULT_KEYS - set(data)
  env = data["environment"]
  assert {"cpu_model", "cpu_cores", "versions", "jax_backend"} <= set(env)
  assert len(data["cells"]) == len(result["cells"])
  for cell in data["cells"]:
    assert CELL_KEYS <= set(cell), set(cell) ^ CELL_KEYS
    assert set(cell["paths"]) == set(ttft.PATHS)
    for name in ("parallel_synthesis", "ps_floor"):
      p = cell["paths"][name]
      assert OK_PATH_KEYS <= set(p)
      assert p["seconds"]["n"] == p["repeats"] >= 1
      assert p["seconds"]["min"] <= p["seconds"]["median"] <= p["seconds"]["max"]
      assert p["memory"]["kind"] == "xla_memory_analysis" and p["memory"]["working_bytes"] > 0
    assert set(cell["paths"]["parallel_synthesis"]["parts_s"]) == {"build_prefix", "prefill"}
    assert {"best_text_over_ps", "ps_over_ps_floor", "ps_over_torch_ps"} <= set(cell["ratios"])
  assert {"text_over_best_prefill", "ps_over_ps_floor", "best_text_over_ps"} <= set(data["targets"])
  with open(paths["md"]) as f:
    md = f.read()
  assert "| N | L |" in md and "PS / PS floor" in md and "## Targets" in md
  assert md.count("\n| ") == 2 * (len(data["cells"]) + 1)  # two tables: header + a row per cell
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return data


def test_ids_only_tiny_model_writes_json_markdown_png(tmp_path):
  model = tiny_model(max_positions=256)
  # N=3, L=64: 64 + 3 * (3 + 64) = 265 text tokens > 256 positions -> text paths skipped.
  config = small_config(num_branches=(3,), branch_lengths=(16, 64), compile_check_lengths=())
  result = ttft.run(model, None, config, log=lambda s: None)
  data = check_outputs(result, ttft_report.write(result, str(tmp_path / "ttft")))
  cells = {(c["num_branches"], c["branch_length"]): c for c in data["cells"]}
  assert set(cells) == {(3, 16), (3, 64)}
  for (n, length), c in cells.items():
    assert c["text_prompt_tokens"] == config.synth_prompt_tokens + n * (3 + length)
    assert c["synth_prompt_tokens"] == config.synth_prompt_tokens
    assert c["branch_bucket"] == 4 and c["branch_slots"] == length  # N=3 -> bucket 4
    assert c["paths"]["torch_ps"] == {"status": "skipped", "reason": "not run: no torch model"}
  assert "no torch model" in cells[(3, 16)]["paths"]["torch_text"]["reason"]
  over = cells[(3, 64)]["paths"]
  for name in ttft.TEXT_PATHS:  # over context comes first
    assert over[name]["status"] == "skipped" and "over context" in over[name]["reason"]
  assert cells[(3, 64)]["ratios"]["best_text_over_ps"] is None
  ok = cells[(3, 16)]
  for name in JAX_PATHS:
    assert ok["paths"][name]["status"] == "ok" and ok["paths"][name]["memory"]["working_bytes"] > 0
  assert ok["ratios"]["best_text_path"] in ("text", "text_floor")
  assert ok["first_tokens_agree"] == {"text": True, "ps": True}
  assert data["parity"] == {} and data["compile_check"] == {}
  assert data["prefill"]["fallback"] is None
  with open(str(tmp_path / "ttft.md")) as f:
    assert "over context" in f.read()


def test_replicate_branches_equals_encode_branches():
  model = tiny_model()
  ids = helpers.random_prompts([20], seed=3, high=128)[0]
  one = ps_jax.encode_branches(model, None, [[ids]])
  want = ps_jax.encode_branches(model, None, [[ids] * 3])
  got = inputs.replicate_branches(one, 3)
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
  ids = inputs.branch_ids(model, tok, 40, config)
  assert len(ids) == 40
  prompts = inputs.prompts_for(model, tok, 3, config)
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
  rand = inputs.branch_ids(model, tok, 50, ttft.TTFTConfig(branch_source="random"))
  assert len(rand) == 50 and not set(rand) & inputs.special_ids(model, tok)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  """A tiny transformers llama (positions 4096) with a tokenizer saved beside it."""
  path = tmp_path_factory.mktemp("ttft_llama")
  t = helpers.tiny_hf_model("llama", path, max_position_embeddings=4096)
  helpers.tiny_tokenizer(path)
  return t


def test_tokenizer_and_torch_reference(tiny_folder, tmp_path):
  model, tok = ps_jax.load(tiny_folder.path, dtype=jnp.float32)
  saved = []
  result = ttft.run(
    model,
    tok,
    small_config(num_branches=(2,)),
    torch_model=tiny_folder.hf,
    model_name="tiny-llama",
    log=lambda s: None,
    on_cell=lambda r: saved.append(len(r["cells"])),
  )
  assert saved == [1]
  data = check_outputs(result, ttft_report.write(result, str(tmp_path / "ttft")))
  for cell in data["cells"]:
    for name in ttft.PATHS:
      assert cell["paths"][name]["status"] == "ok", (name, cell["paths"][name])
    for name in ("torch_text", "torch_ps"):
      assert cell["paths"][name]["peak"]["kind"] == "rss_peak_delta"
    # Same ids, same weights: every text path and every PS path agrees on the first token.
    assert cell["first_tokens_agree"] == {"text": True, "ps": True}
    assert cell["library_text_prompt_tokens"] > 0
    r = cell["ratios"]
    assert r["best_text_path"] in ttft.TEXT_PATHS and set(r["text_over_ps"]) == set(ttft.TEXT_PATHS)
    assert all(v is not None for k, v in r.items() if k != "text_over_ps")
  assert data["parity"]["max_abs_diff"] < 1e-3 and data["parity"]["argmax_agrees"]
  check = data["compile_check"]
  assert check["api"] == "ps_jax.synthesize" and check["compiled_once"]
  assert check["length_buckets"] == [32] and all(
    v <= 1 for v in check["programs_compiled"].values()
  )
  assert data["environment"]["torch_threads"] >= 1


def test_select_prefill_falls_back_where_the_backend_fails():
  model = tiny_model()
  used, record = checks.select_prefill(model, PrefillConfig(kv_block=None, implementation="cudnn"))
  assert used == DEFAULT_PREFILL and record["fallback"]  # no cuDNN on the CPU
  used, record = checks.select_prefill(model, PrefillConfig(kv_block=None, implementation="xla"))
  assert used.kv_block is None and record["fallback"] is None
  assert record["max_abs_diff_vs_default"] < 1e-4 and record["argmax_agrees"]


def _cell(n, length, **medians):
  paths = {}
  for name in ttft.PATHS:
    m = medians.get(name)
    paths[name] = (
      {"status": "ok", "seconds": {"median": m, "min": m, "max": m}, "repeats": 5}
      if m is not None
      else {"status": "skipped", "reason": "over context: ..."}
    )
  return {
    "num_branches": n,
    "branch_length": length,
    "branch_tokens": n * length,
    "text_prompt_tokens": n * length + 50,
    "paths": paths,
    "ratios": ttft.ratios(paths),
    "first_tokens_agree": {"text": True, "ps": True},
  }


def test_ratios_and_targets_of_a_synthetic_result(tmp_path):
  cells = [
    _cell(4, 512, text=3.0, text_floor=2.8, torch_text=2.0, parallel_synthesis=0.1, ps_floor=0.09,
          torch_ps=0.2),
    _cell(8, 2048, parallel_synthesis=0.5, ps_floor=0.3, torch_ps=0.4),
  ]  # fmt: skip
  r = cells[0]["ratios"]
  assert r["best_text_path"] == "torch_text" and r["best_text_over_ps"] == pytest.approx(20.0)
  assert r["text_over_best_prefill"] == pytest.approx(1.5)
  assert r["ps_over_torch_ps"] == pytest.approx(0.5)
  forward = {
    "environment": {"time_utc": "t"},
    "results": {
      "ratio_ps_jax_over_transformers": {
        "prefill_512": {"median": 1.1, "round_min": 0.9, "round_max": 1.2, "rounds": []},
        "decode_b1": {"median": 2.0, "round_min": 2.0, "round_max": 2.0, "rounds": []},
      }
    },
  }
  result = {
    "environment": {"jax_backend": "cpu", "time_utc": "t", "versions": {}, "cpu_cores": 2},
    "cells": cells,
    "forward_prefill": ttft._forward_prefill(forward, "fwd.json"),  # pylint: disable=protected-access
  }
  t = ttft.targets(result)
  assert t["prefill_speed_vs_torch"]["512"]["met"] and set(t["prefill_speed_vs_torch"]) == {"512"}
  assert t["text_over_best_prefill"]["met"] is False  # 1.5 > 1.2
  assert t["ps_over_torch_ps"]["value"] == pytest.approx(1.25) and not t["ps_over_torch_ps"]["met"]
  assert t["ps_over_ps_floor"]["cell"] == [8, 2048]
  assert t["best_text_over_ps"]["cpu"]["status"] == "met"
  assert t["best_text_over_ps"]["gpu"]["status"].startswith("not measured")
  result.update(
    targets=t, model="m", dtype="float32", tokenizer=None, wall_s=1.0, prefill={},
    model_config={"max_position_embeddings": 8192},
    config=dataclasses.asdict(ttft.TTFTConfig()),
  )  # fmt: skip
  md = ttft_report.markdown(result)
  assert "1.10x (per-round 0.90-1.20x): **met**" in md and "over context" in md
  assert "worst 1.50x (worst cell N=4, L=512): **not met**" in md
  ttft_report.write_plot(result, str(tmp_path / "p.png"))


def test_config_presets_and_quick_mode():
  from configs import bench_ttft  # pylint: disable=import-outside-toplevel

  full = ttft.config_from_dict(bench_ttft.get_config().to_dict())
  assert tuple(full.num_branches) == (2, 4, 8) and tuple(full.branch_lengths) == (128, 512, 2048)
  assert full.repeats >= 5 and full.prefill == DEFAULT_PREFILL
  quick = bench_ttft.get_config("quick=true")
  assert quick.quick and tuple(quick.branch_lengths) == bench_ttft.QUICK["branch_lengths"]
  assert quick.output.startswith("/tmp/")
  gpu = bench_ttft.get_config("gpu")
  assert gpu.random_init and gpu.dtype == "bfloat16" and gpu.torch_device == "cuda"
  assert gpu.random_shape.num_layers == 28 and gpu.random_shape.hidden_size == 2048
  g = ttft.config_from_dict(gpu.to_dict())
  assert g.grid() == [(4, 512), (8, 2048)]
  assert g.prefill == PrefillConfig(chunk=1024, kv_block=None, implementation="cudnn")
  dry = bench_ttft.get_config("gpu,dry_run=true")
  assert dry.torch_device == "cpu" and dry.random_shape.num_layers == 2 and dry.dtype == "float32"
  with pytest.raises(ValueError, match="min_repeats"):
    ttft.TTFTConfig(repeats=2, min_repeats=3)
  with pytest.raises(ValueError, match="prefill_attention"):
    ttft.TTFTConfig(prefill_attention="flash")


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
    "--config.num_branches=(2,)",
    "--config.branch_lengths=(16,)",
    "--config.repeats=1",
    "--config.min_repeats=1",
    "--config.compile_check_lengths=(20,24)",
    "--config.forward_json=",
  ]
  proc = subprocess.run(
    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(stem + ".json") as f:
    data = json.load(f)
  assert [(c["num_branches"], c["branch_length"]) for c in data["cells"]] == [(2, 16)]
  assert data["config"]["repeats"] == 1  # overridden on the command line
  assert data["config"]["path_budget_s"] == 30.0 and data["config"]["warmup"] == 1
  assert all(c["paths"][k]["status"] == "ok" for c in data["cells"] for k in ttft.PATHS)
  assert os.path.exists(stem + ".md") and os.path.exists(stem + ".png")
