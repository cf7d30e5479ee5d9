"""ModelConfig.from_hf: the fields of each family, old and new transformers layouts, errors."""

from __future__ import annotations

import pytest

import helpers
from ps_jax.model import ModelConfig, RopeScaling

LLAMA3 = RopeScaling(
  kind="llama3",
  factor=8.0,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=32,
)

EXPECTED = {
  # family: (family, layers, head_dim, tie, qkv_bias, qk_norm, theta, scaling)
  "llama": ("llama", 2, 16, False, False, False, 10000.0, RopeScaling()),
  "llama3_tied": ("llama", 3, 16, True, False, False, 10000.0, LLAMA3),
  "qwen2": ("qwen2", 2, 16, False, True, False, 1e6, RopeScaling()),
  "qwen3": ("qwen3", 2, 32, False, False, True, 1e6, RopeScaling()),
}


@pytest.mark.parametrize("family", list(helpers.FAMILIES))
def test_from_hf_families(family):
  hf = helpers.tiny_hf_config(family).to_dict()
  c = ModelConfig.from_hf(hf)
  fam, layers, head_dim, tie, bias, qk_norm, theta, scaling = EXPECTED[family]
  assert (c.family, c.num_layers, c.head_dim, c.tie_embeddings, c.qkv_bias, c.qk_norm) == (
    fam,
    layers,
    head_dim,
    tie,
    bias,
    qk_norm,
  )
  assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads) == (
    helpers.VOCAB,
    64,
    128,
    4,
    2,
  )
  assert c.queries_per_kv == 2
  assert c.rope_theta == theta and c.rope_scaling == scaling
  assert c.rms_norm_eps == 1e-5
  assert c.max_position_embeddings == helpers.MAX_POSITIONS
  assert (c.bos_token_id, c.eos_token_ids) == (1, (2,))


def test_transformers4_layout():
  """Older config.json files: rope_theta and rope_scaling at top level, eos as a list."""
  hf = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "rope_scaling": {
      "factor": 32.0,
      "high_freq_factor": 4.0,
      "low_freq_factor": 1.0,
      "original_max_position_embeddings": 8192,
      "rope_type": "llama3",
    },
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
  }
  c = ModelConfig.from_hf(hf)
  assert c.head_dim == 64 and c.num_kv_heads == 8 and c.rope_theta == 500000.0
  assert c.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
  assert c.eos_token_ids == (128001, 128008, 128009)
  legacy = dict(hf, rope_scaling={"type": "linear", "factor": 2.0})
  assert ModelConfig.from_hf(legacy).rope_scaling == RopeScaling("linear", 2.0)


def test_defaults_when_keys_missing():
  hf = {
    "model_type": "llama",
    "vocab_size": 10,
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
  }
  c = ModelConfig.from_hf(hf)
  assert c.num_kv_heads == 2 and c.head_dim == 4 and c.rope_theta == 10000.0
  assert c.eos_token_ids == () and not c.tie_embeddings


def test_family_from_architectures_when_model_type_unknown():
  hf = helpers.tiny_hf_config("qwen2").to_dict()
  hf["model_type"] = "my_qwen"
  hf["architectures"] = ["Qwen2ForCausalLM"]
  assert ModelConfig.from_hf(hf).family == "qwen2"


def test_unsupported_model_type_named():
  hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 10}
  with pytest.raises(ValueError, match="gpt2") as e:
    ModelConfig.from_hf(hf)
  assert "GPT2LMHeadModel" in str(e.value) and "llama" in str(e.value)


@pytest.mark.parametrize(
  "rope", [{"rope_type": "yarn", "factor": 4.0}, {"rope_type": "dynamic", "factor": 2.0}]
)
def test_unsupported_rope_scaling_named(rope):
  hf = helpers.tiny_hf_config("llama").to_dict()
  hf["rope_parameters"] = dict(rope, rope_theta=10000.0)
  with pytest.raises(ValueError, match=rope["rope_type"]):
    ModelConfig.from_hf(hf)


def test_invalid_head_grouping_named():
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    ModelConfig(
      family="llama",
      vocab_size=8,
      hidden_size=8,
      intermediate_size=8,
      num_layers=1,
      num_heads=4,
      num_kv_heads=3,
      head_dim=2,
    )


# Architectural switches that ModelConfig does not model. Loading such a checkpoint must fail
# loudly (DESIGN.md section 5: "never silently mis-computed"); today they are ignored.
@pytest.mark.parametrize(
  "family,change,named",
  [
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    (
      "qwen2",
      {
        "use_sliding_window": True,
        "sliding_window": 16,
        "max_window_layers": 0,
        "layer_types": ["sliding_attention"] * 2,
      },
      "sliding",
    ),
  ],
)
def test_unmodelled_switches_raise(family, change, named):
  hf = dict(helpers.tiny_hf_config(family).to_dict(), **change)
  with pytest.raises(ValueError, match=named):
    ModelConfig.from_hf(hf)
