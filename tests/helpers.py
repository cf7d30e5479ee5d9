"""Shared builders for tests: tiny random transformers models, padding, jitted forwards.

Import as `import helpers` (tests/conftest.py puts tests/ and the repo root on sys.path).
Everything here is CPU-only, fp32 and deterministic for a given seed.

Most tests want the session fixture `tiny` from tests/conftest.py, which builds each family
once per session: `tiny_hf, model = tiny("qwen3")` (do not mutate either). To build your own
(e.g. to corrupt its files, or with other dims):

    tiny_hf = helpers.tiny_hf_model("llama", tmp_path, vocab_size=384)  # TinyHF(hf, path)
    model = helpers.load_tiny(tiny_hf)                # == ps_jax.load(tiny_hf.path)[0]
    tokens, lengths = helpers.right_pad(helpers.random_prompts([7, 3]), 16)
    ours = helpers.jit_forward(model)(tokens, lengths)   # [B, T, V] numpy
    ref = helpers.hf_logits(tiny_hf.hf, tokens, lengths)
    assert helpers.valid_max_abs_diff(ours, ref, lengths) <= 1e-4

Building + saving a tiny model takes ~0.2 s, loading it ~0.5 s, a first forward compiles
for ~1 s (more on a loaded machine).

Families (`FAMILIES`): "llama" (untied), "llama3_tied" (llama3 RoPE scaling with a small
original context so scaling matters, tied embeddings, 3 layers), "qwen2" (q/k/v bias),
"qwen3" (per-head q/k RMSNorm, head_dim 32 != hidden/heads = 16). All have hidden 64,
4 heads / 2 kv heads, vocab 384 (VOCAB), max_position_embeddings 256, norm weights drawn from
U(0.5, 1.5) and biases from U(-0.5, 0.5) so that a missing norm or bias shows.

Also here: `hf_greedy` (transformers greedy reference), `jit_model` / `jit_step` (jitted
model calls with caches, prefixes), `count_compiles` (no-retrace assertions),
`tiny_tokenizer` (byte-level BPE trained in-process, with a chat template),
`write_tiny_gguf` / `llamacpp_permute` / `llama3_rope_factors` (GGUF files as llama.cpp
writes them), `edit_config_json`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# 384 >= 259 = 256 bytes + 3 specials: `tiny_tokenizer()` (byte-level BPE) then covers every
# byte with ids < VOCAB, so any text it encodes is in the tiny models' vocabulary.
VOCAB = 384
MAX_POSITIONS = 256

_COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=MAX_POSITIONS,
  rms_norm_eps=1e-5,
  # Weights ~N(0, 0.125^2): projections of unit-RMS activations are O(1), so attention is
  # far from uniform and logits have O(1) spread (the transformers default 0.02 gives
  # near-uniform attention and tiny logits, which would hide bugs).
  initializer_range=0.125,
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=0,
)

# family name -> (transformers model_type, config overrides)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
  "llama": ("llama", dict(tie_word_embeddings=False, rope_theta=10000.0)),
  "llama3_tied": (
    "llama",
    dict(
      tie_word_embeddings=True,
      num_hidden_layers=3,
      rope_theta=10000.0,
      rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
      },
    ),
  ),
  "qwen2": ("qwen2", dict(tie_word_embeddings=False, rope_theta=1000000.0)),
  "qwen3": ("qwen3", dict(tie_word_embeddings=False, head_dim=32, rope_theta=1000000.0)),
}


@dataclasses.dataclass
class TinyHF:
  """A tiny transformers model saved to `path` (config.json + model.safetensors)."""

  family: str  # key of FAMILIES
  hf: Any  # the torch model (fp32, eager attention, eval mode), weights == the saved ones
  path: str  # folder for ps_jax.load / from_pretrained

  @property
  def config(self):
    return self.hf.config


def tiny_hf_config(family: str, **overrides):
  """The transformers config of a tiny model of `family` (see FAMILIES), with overrides."""
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel

  model_type, fam = FAMILIES[family]
  kwargs = {**_COMMON, **fam, **overrides}
  return AutoConfig.for_model(model_type, **kwargs)


def tiny_hf_model(family: str, path: str | os.PathLike, *, seed: int = 0, **overrides) -> TinyHF:
  """Builds a tiny random transformers model of `family`, saves it to `path`, returns it.

  Norm weights ~U(0.5, 1.5), biases ~U(-0.5, 0.5); everything else as transformers
  initialises it with `initializer_range` (0.125 by default). Saved with safetensors.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  config = tiny_hf_config(family, **overrides)
  torch.manual_seed(seed)
  hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  hf = hf.float().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  hf.save_pretrained(path, safe_serialization=True)
  return TinyHF(family=family, hf=hf, path=path)


def load_tiny(tiny: TinyHF, dtype=None):
  """ps_jax model loaded from a TinyHF folder (fp32 unless dtype is given)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import ps_jax  # pylint: disable=import-outside-toplevel

  model, _ = ps_jax.load(tiny.path, dtype=jnp.float32 if dtype is None else dtype)
  return model


def edit_config_json(path: str | os.PathLike, **changes) -> None:
  """Rewrites keys of `path`/config.json in place (a value of None deletes the key)."""
  cfg_path = os.path.join(os.fspath(path), "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  for k, v in changes.items():
    if v is None:
      cfg.pop(k, None)
    else:
      cfg[k] = v
  with open(cfg_path, "w") as f:
    json.dump(cfg, f, indent=2)


def random_prompts(
  lengths: Sequence[int], *, seed: int = 0, low: int = 3, high: int = VOCAB
) -> list[list[int]]:
  """Prompts of the given lengths with ids in [low, high) (ids 0..2 are pad/bos/eos)."""
  rng = np.random.default_rng(seed)
  return [[int(x) for x in rng.integers(low, high, size=n)] for n in lengths]


def right_pad(
  prompts: Sequence[Sequence[int]], width: int | None = None, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, width] int32 right-padded with `pad`, lengths [B] int32)."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  width = int(lengths.max()) if width is None else width
  tokens = np.full((len(prompts), width), pad, np.int32)
  for i, p in enumerate(prompts):
    tokens[i, : len(p)] = p
  return tokens, lengths


def hf_logits(hf, tokens: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
  """fp32 logits [B, T, V] of a transformers model on right-padded tokens."""
  import torch  # pylint: disable=import-outside-toplevel

  tokens = np.asarray(tokens)
  b, t = tokens.shape
  if lengths is None:
    lengths = np.full((b,), t)
  mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
  with torch.no_grad():
    out = hf(
      input_ids=torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask)
    )
  return out.logits.float().numpy()


def hf_greedy(hf, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
  """transformers greedy continuation of one prompt: exactly max_new_tokens ids (no EOS stop)."""
  import torch  # pylint: disable=import-outside-toplevel

  ids = torch.as_tensor([list(prompt)], dtype=torch.long)
  with torch.no_grad():
    out = hf.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=max_new_tokens,
      min_new_tokens=max_new_tokens,
      eos_token_id=None,
      pad_token_id=0,
      temperature=None,
      top_p=None,
      top_k=None,
    )
  return [int(x) for x in out[0, len(prompt) :]]


def valid_max_abs_diff(a: np.ndarray, b: np.ndarray, lengths: Sequence[int]) -> float:
  """max |a - b| over the valid positions [i, :lengths[i]] of two [B, T, ...] arrays."""
  return max(
    float(np.max(np.abs(np.asarray(a)[i, :n] - np.asarray(b)[i, :n])))
    for i, n in enumerate(lengths)
  )


def jit_forward(model):
  """jitted `(tokens [B, T], lengths [B]) -> logits [B, T, V]` of a ps_jax model, no cache.

  Compiles once per shape; the model's parameters are passed as arguments (not constants).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  graphdef, params = nnx.split(model)

  @jax.jit
  def fwd(params, tokens, lengths):
    logits, _ = nnx.merge(graphdef, params)(tokens, lengths=lengths)
    return logits

  return lambda tokens, lengths: np.asarray(fwd(params, tokens, lengths))


def jit_model(model):
  """jitted `model(tokens, positions=None, cache=None, **kwargs) -> (logits, cache)`.

  kwargs must be arrays or pytrees of arrays (lengths=, prefix=, lora=); None is allowed
  anywhere. Compiles once per combination of shapes; parameters are arguments.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  graphdef, params = nnx.split(model)

  @jax.jit
  def call(params, tokens, positions, cache, kwargs):
    return nnx.merge(graphdef, params)(tokens, positions, cache, **kwargs)

  def run(tokens, positions=None, cache=None, **kwargs):
    return call(params, tokens, positions, cache, kwargs)

  return run


def jit_step(model):
  """jitted `(tokens [B, T], positions [B, T], cache, lengths [B]) -> (logits, cache)`."""
  call = jit_model(model)
  return lambda tokens, positions, cache, lengths: call(tokens, positions, cache, lengths=lengths)


def llamacpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's q/k row permutation (convert_hf_to_gguf.py `LlamaModel.permute`)."""
  return (
    w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
    .swapaxes(1, 2)
    .reshape(w.shape)
  )


def llama3_rope_factors(hf_config) -> np.ndarray:
  """The `rope_freqs.weight` tensor llama.cpp writes for llama3 RoPE scaling (per frequency
  divisor: plain inv_freq / scaled inv_freq), computed as convert_hf_to_gguf.py does."""
  import math  # pylint: disable=import-outside-toplevel

  p = hf_config.rope_parameters
  dim = getattr(hf_config, "head_dim", None) or (
    hf_config.hidden_size // hf_config.num_attention_heads
  )
  freqs = 1.0 / (p["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  old, lo, hi, factor = (
    p["original_max_position_embeddings"],
    p["low_freq_factor"],
    p["high_freq_factor"],
    p["factor"],
  )
  out = []
  for f in freqs:
    wavelen = 2 * math.pi / f
    if wavelen < old / hi:
      out.append(1.0)
    elif wavelen > old / lo:
      out.append(factor)
    else:
      smooth = (old / wavelen - lo) / (hi - lo)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def write_tiny_gguf(
  tiny: TinyHF,
  path: str | os.PathLike,
  *,
  tokenizer=None,
  arch: str = "llama",
  rope_freqs: bool = True,
  metadata: dict[str, str] | None = None,
) -> str:
  """Writes a TinyHF Llama as an F32 GGUF file the way llama.cpp's converter does.

  q/k rows are permuted with `llamacpp_permute`; tensors are stored [out, in] (GGUF's
  reversed dims); a llama3-scaled model gets a `rope_freqs.weight` tensor (when rope_freqs)
  and no rope.scaling.type, as convert_hf_to_gguf.py writes Llama 3.1+. With `tokenizer`
  (e.g. from `tiny_tokenizer`), its BPE vocab, merges, special ids and chat template are
  embedded as a "gpt2" tokenizer (SmolLM2's kind). `metadata`: extra string fields (e.g.
  general.source.repo_url). Returns the path.
  """
  import gguf  # pylint: disable=import-outside-toplevel

  c = tiny.config
  n_head, n_kv = c.num_attention_heads, c.num_key_value_heads
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
  path = os.fspath(path)
  w = gguf.GGUFWriter(path, arch)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_block_count(c.num_hidden_layers)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(n_head)
  w.add_head_count_kv(n_kv)
  w.add_rope_dimension_count(head_dim)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_vocab_size(c.vocab_size)
  w.add_file_type(gguf.LlamaFileType.ALL_F32)
  for key, value in (metadata or {}).items():
    w.add_string(key, value)
  if tokenizer is not None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(
      [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.chat_template:
      w.add_chat_template(tokenizer.chat_template)
  else:
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
  names = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
  }
  per_layer = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
  }
  state = {k: v.detach().float().numpy() for k, v in tiny.hf.state_dict().items()}
  if c.tie_word_embeddings:
    state.pop("lm_head.weight", None)
  if rope_freqs and c.rope_parameters.get("rope_type") == "llama3":
    w.add_tensor("rope_freqs.weight", llama3_rope_factors(c))
  for name, value in state.items():
    if name in names:
      w.add_tensor(names[name], np.ascontiguousarray(value))
      continue
    parts = name.split(".")  # model.layers.{i}.<module...>.weight
    i, module = parts[2], ".".join(parts[3:-1])
    if name.endswith("q_proj.weight"):
      value = llamacpp_permute(value, n_head)
    elif name.endswith("k_proj.weight"):
      value = llamacpp_permute(value, n_kv)
    w.add_tensor(f"blk.{i}.{per_layer[module]}.weight", np.ascontiguousarray(value))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations (and jaxpr traces) of anything jax runs inside the block.

      with helpers.count_compiles() as c:
        f(x)
      assert c.compiles == 0   # c.traces too

  Uses jax.monitoring events, so it sees every jit, eager op and scan, not just one function.
  """
  import jax  # pylint: disable=import-outside-toplevel

  events = collections.Counter()

  def listener(event, _duration, **_kwargs):
    events[event] += 1

  class Counts:
    @property
    def compiles(self) -> int:
      return events[BACKEND_COMPILE_EVENT]

    @property
    def traces(self) -> int:
      return events[TRACE_EVENT]

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield Counts()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def tiny_tokenizer(
  path: str | os.PathLike | None = None, *, vocab_size: int = VOCAB, chat_template: bool = True
):
  """A byte-level BPE tokenizer trained in-process (ids 0,1,2 = <pad>, <s>, </s>).

  With `path`, it is saved there too (so `ps_jax.load(folder)` returns it). Its vocabulary
  fits a tiny model of vocab `vocab_size` (default VOCAB, the tiny models' vocabulary), which
  must be >= 259 (256 bytes + 3 specials). The chat template is a minimal one-line format.
  """
  if vocab_size < 259:
    raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 259 ids")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<pad>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  corpus = [
    "What is the capital of France? The capital of France is Paris.",
    "One plus one is two. Two plus two is four.",
    "The quick brown fox jumps over the lazy dog.",
  ] * 10
  tok.train_from_iterator(corpus, trainer)
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
  )
  if chat_template:
    fast.chat_template = (
      "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>"
      "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
  if path is not None:
    fast.save_pretrained(os.fspath(path))
  return fast
