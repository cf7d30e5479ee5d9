"""GGUF tokenizers built from metadata (ps_jax.io.gguf_tokenizer): parity with transformers'
own GGUF tokenizer (which imports torch), the torch-free load path, clear errors.

SmolLM2's file says tokenizer.ggml.pre="smollm": digits are split one by one before the byte-level
regex, as in SmolLM2's tokenizer.json and llama.cpp. transformers 5.24's GGUF reader skips that
split, which shows where a whitespace run precedes a digit ("x  1") or at a non-ASCII numeral
(" ½"); there the reference is transformers' tokenizer with tokenizer.json's pre-tokenizer
(Digits + ByteLevel) put back.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import unicodedata

import pytest

import helpers
from ps_jax.io.gguf_tokenizer import tokenizer_from_gguf

SMOLLM2 = "smollm2-135m-instruct"

TEXTS = [
  "",
  "Hello, world!",
  "The capital of France is Paris.",
  "don't won't I'm they're we've HELLO'S",
  "def add(a, b):\n    return a + b\n\n\nclass A:\n\tdef f(self):\n\t\tpass\n",
  "if x:\n        y = [1, 2, 3]  # comment\n    else:\n  z = {'k': None}\n",
  "a  b   c    d     e",
  "   leading and trailing   ",
  "\n\n\nline\r\nwindows\rcr\n",
  "tab\tseparated\t\tvalues\t",
  "   \n  \t \n",
  "12345 and 2024, 3.14159, -7e10, 1,000,000, 0x1F",
  "x  1",
  "x =   42",
  "    1. first\n    2. second\n\t3. third",
  "naïve café déjà vu, Ærøskøbing, Ångström, e\u0301 (combining)",
  "日本語のテキスト、中文文本，한국어 텍스트",
  "Ελληνικά и русский текст, עברית, العربية",
  "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
  "\u00a0non-breaking\u2009thin\u3000ideographic \ufb01 ligature",
  "$$x^2 + y_1 = \\frac{a}{b}$$ ½ ² Ⅻ",
  "<|im_start|>user\nhi<|im_end|>\n",
  "text<|endoftext|>more<|im_end|><|im_start|>",
  "<repo_name>x<file_sep>y<jupyter_code>",
  "almost special: <|im_start| and <im_start> and <|IM_START|>",
]

CONVERSATIONS = [
  [{"role": "user", "content": "What is the capital of France?"}],
  [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three primes."},
    {"role": "assistant", "content": "2, 3, 5."},
    {"role": "user", "content": "And the next   7?"},
  ],
  [
    {"role": "user", "content": "Write code:\n```python\ndef f(x):\n    return x  * 2\n```"},
    {"role": "assistant", "content": "Done:\n\n    1. f(2) == 4\n\t2. 日本 😀"},
  ],
  [{"role": "system", "content": ""}, {"role": "user", "content": "  spaced  \n"}],
]


def _digit_split_matters(text: str) -> bool:
  """Where SmolLM's digit split changes SmolLM2's tokens: a whitespace run before a digit, and
  non-ASCII numerals (½ ² Ⅻ), whose UTF-8 bytes would otherwise merge with a space before."""
  return re.search(r"\s\s\d", text) is not None or any(
    unicodedata.category(c)[0] == "N" and not c.isascii() for c in text
  )


@pytest.fixture(scope="module")
def smollm2_tokenizers():
  """(ours, transformers' GGUF tokenizer, transformers' with tokenizer.json's pre-tokenizer)."""
  from tokenizers import pre_tokenizers  # pylint: disable=import-outside-toplevel
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  from ps_jax.io.registry import embedded_path  # pylint: disable=import-outside-toplevel

  path = embedded_path(SMOLLM2)
  ours = tokenizer_from_gguf(path)
  ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  ref_digits = copy.deepcopy(ref)
  ref_digits.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), ref.backend_tokenizer.pre_tokenizer]
  )
  return ours, ref, ref_digits


@pytest.mark.slow
def test_smollm2_special_tokens_and_vocab(smollm2_tokenizers):
  ours, ref, _ = smollm2_tokenizers
  for name in ("bos", "eos", "pad", "unk"):
    assert getattr(ours, f"{name}_token") == getattr(ref, f"{name}_token"), name
    assert getattr(ours, f"{name}_token_id") == getattr(ref, f"{name}_token_id"), name
  assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
  assert (ours.add_bos_token, ours.add_eos_token) == (ref.add_bos_token, ref.add_eos_token)
  assert ours.all_special_ids == ref.all_special_ids
  assert len(ours) == len(ref) == 49152 and ours.get_vocab() == ref.get_vocab()
  assert ours.chat_template == ref.chat_template and ours.chat_template
  # Control tokens stay whole and are special (skipped by skip_special_tokens).
  assert [t.content for t in ours.added_tokens_decoder.values() if t.special] == [
    t.content for t in ref.added_tokens_decoder.values() if t.special
  ]


@pytest.mark.slow
def test_smollm2_ids_match_transformers(smollm2_tokenizers):
  ours, ref, ref_digits = smollm2_tokenizers
  for text in TEXTS:
    got = ours.encode(text)
    assert got == ref_digits.encode(text), text
    if not _digit_split_matters(text):
      assert got == ref.encode(text), text
    assert ours.encode(text, add_special_tokens=False) == got  # no BOS/EOS for SmolLM2
    assert ours(text)["input_ids"] == got
  batch = ours(TEXTS[:4], padding=True)
  assert batch["input_ids"] == ref_digits(TEXTS[:4], padding=True)["input_ids"]
  print(
    f"\n[gguf tokenizer] {len(TEXTS)} texts: ids identical to transformers' GGUF tokenizer "
    f"({sum(map(_digit_split_matters, TEXTS))} of them with tokenizer.json's digit split)"
  )


@pytest.mark.slow
def test_smollm2_digits_split_as_tokenizer_json(smollm2_tokenizers):
  ours, _, _ = smollm2_tokenizers
  tokens = lambda text: ours.convert_ids_to_tokens(ours.encode(text))  # noqa: E731
  assert tokens("x  1") == ["x", "ĠĠ", "1"]
  assert tokens("    1. a") == ["ĠĠĠĠ", "1", ".", "Ġa"]
  assert tokens("2024") == ["2", "0", "2", "4"]


@pytest.mark.slow
def test_smollm2_decode_matches_transformers(smollm2_tokenizers):
  ours, ref, _ = smollm2_tokenizers
  for text in TEXTS:
    ids = ours.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == text, text
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
  every = list(range(0, len(ours), 7))  # every 7th id of the vocabulary, one by one and joined
  assert ours.batch_decode([[i] for i in every]) == ref.batch_decode([[i] for i in every])
  assert ours.decode(every) == ref.decode(every)


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_matches_transformers(smollm2_tokenizers, add_generation_prompt):
  ours, ref, ref_digits = smollm2_tokenizers
  for conv in CONVERSATIONS:
    text = ours.apply_chat_template(
      conv, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert text == ref.apply_chat_template(
      conv, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n") == add_generation_prompt
    ids = ours.apply_chat_template(
      conv, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    want = (ref_digits if _digit_split_matters(text) else ref).apply_chat_template(
      conv, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    assert ids == want == ours.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == text


@pytest.mark.slow
def test_smollm2_load_and_generate_without_torch(tmp_path):
  """README command 1's path: load_tokenizer, ps.load and ps.generate with torch unimportable."""
  script = """
import json, sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, whoever tries
import ps_jax as ps
tokenizer = ps.io.load_tokenizer("smollm2-135m-instruct")
model, tok = ps.load("smollm2-135m-instruct")
texts = ps.generate(model, tok, ["What is the capital of France?"], max_new_tokens=2)
assert sys.modules["torch"] is None
print(json.dumps({"class": type(tok).__name__, "eos": tok.eos_token_id, "texts": texts,
                  "same": tokenizer.encode("a  1 b") == tok.encode("a  1 b"),
                  "chat": tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                  tokenize=False)}))
"""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"\n[gguf tokenizer] without torch: {out['texts']!r}")
  assert out["class"] == "TokenizersBackend" and out["eos"] == 2 and out["same"]
  assert len(out["texts"]) == 1 and isinstance(out["texts"][0], str)
  assert out["chat"].endswith("<|im_start|>user\nhi<|im_end|>\n")


# Tiny GGUF files written here: no real model needed.


def _write_tokenizer_gguf(
  path,
  kind: str,
  tokens,
  *,
  types=None,
  merges=None,
  scores=None,
  pre=None,
  bos=None,
  eos=None,
  unk=None,
  pad=None,
  add_bos=None,
  chat_template=None,
  arch: str = "llama",
) -> str:
  import gguf  # pylint: disable=import-outside-toplevel

  w = gguf.GGUFWriter(os.fspath(path), arch)
  w.add_tokenizer_model(kind)
  if pre is not None:
    w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  if types is not None:
    w.add_token_types(types)
  if merges is not None:
    w.add_token_merges(merges)
  if scores is not None:
    w.add_token_scores(scores)
  for value, add in (
    (bos, w.add_bos_token_id),
    (eos, w.add_eos_token_id),
    (unk, w.add_unk_token_id),
    (pad, w.add_pad_token_id),
    (add_bos, w.add_add_bos_token),
    (chat_template, w.add_chat_template),
  ):
    if value is not None:
      add(value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return os.fspath(path)


def _transformers_gguf_tokenizer(path: str):
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def byte_level_vocab():
  """(tokens, token types, merges) of a byte-level BPE trained in-process (helpers)."""
  tok = helpers.tiny_tokenizer()
  spec = json.loads(tok.backend_tokenizer.to_str())
  tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
  types = [3 if t in ("<pad>", "<s>", "</s>") else 1 for t in tokens]
  return tokens, types, merges


TINY_TEXTS = [
  "What is the capital of France? Paris.",
  "One plus one is two.",
  "  two  spaces\n\nand\tthe 123 4567 numbers's",
  "naïve 日本 😀",
  "<s>x</s> <pad>",
  "The quick brown fox\r\n  jumps 99 times",
  "It's HE'LL they'RE",
]


@pytest.mark.parametrize("pre", ["default", "gpt-2", "qwen2", "llama-bpe"])
def test_tiny_byte_level_matches_transformers(tmp_path, byte_level_vocab, pre):
  tokens, types, merges = byte_level_vocab
  template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  path = _write_tokenizer_gguf(
    tmp_path / "bpe.gguf",
    "gpt2",
    tokens,
    types=types,
    merges=merges,
    pre=pre,
    bos=1,
    eos=2,
    pad=0,
    add_bos=False,
    chat_template=template,
  )
  ours, ref = tokenizer_from_gguf(path), _transformers_gguf_tokenizer(path)
  assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 0)
  assert ours.chat_template == ref.chat_template
  for text in TINY_TEXTS:
    ids = ours.encode(text)
    assert ids == ref.encode(text), (pre, text)
    assert ours.decode(ids) == ref.decode(ids) == text


def test_tiny_byte_level_smollm_splits_digits(tmp_path, byte_level_vocab):
  tokens, types, merges = byte_level_vocab
  path = _write_tokenizer_gguf(
    tmp_path / "bpe.gguf", "gpt2", tokens, types=types, merges=merges, pre="smollm", bos=1, eos=2
  )
  pieces = tokenizer_from_gguf(path).backend_tokenizer.pre_tokenizer.pre_tokenize_str("a  12x")
  assert [p for p, _ in pieces] == ["a", "ĠĠ", "1", "2", "x"]


def _sentencepiece_vocab():
  """A SentencePiece-style scored vocabulary as llama.cpp writes it: <unk> <s> </s>, 256 byte
  tokens, then pieces (spaces as U+2581) scored by rank; no merges in the file."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel

  sp = Tokenizer(models.BPE())
  sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
  trainer = trainers.BpeTrainer(vocab_size=200, show_progress=False)
  corpus = [
    "What is the capital of France? The capital of France is Paris.",
    "One plus one is two. Two plus two is four.",
    "The quick brown fox jumps over the lazy dog.",
  ] * 10
  sp.train_from_iterator(corpus, trainer)
  pieces = [t for t, _ in sorted(sp.get_vocab().items(), key=lambda kv: kv[1])]
  tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
  types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
  scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
  return tokens, types, scores


def test_tiny_sentencepiece_matches_transformers(tmp_path):
  tokens, types, scores = _sentencepiece_vocab()
  path = _write_tokenizer_gguf(
    tmp_path / "spm.gguf", "llama", tokens, types=types, scores=scores, bos=1, eos=2, unk=0
  )
  ours, ref = tokenizer_from_gguf(path), _transformers_gguf_tokenizer(path)
  assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (1, 2, 0)
  assert ours.add_bos_token and ref.add_bos_token  # llama.cpp's default for SentencePiece
  for text in TINY_TEXTS + ["", " leading space", "end of text "]:
    ids = ours.encode(text)
    assert ids == ref.encode(text), text
    assert ids[0] == 1
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
  # Characters outside the pieces fall back to byte tokens and decode back.
  ids = ours.encode("é日", add_special_tokens=False)
  assert ours.convert_ids_to_tokens(ids)[1:] == ["<0xC3>", "<0xA9>", "<0xE6>", "<0x97>", "<0xA5>"]
  assert ours.decode(ids) == "é日"


def test_unsupported_tokenizer_model_named(tmp_path):
  path = _write_tokenizer_gguf(tmp_path / "bert.gguf", "bert", ["[PAD]", "[UNK]", "a"])
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model='bert' is not supported"):
    tokenizer_from_gguf(path)


def test_unknown_pre_tokenizer_named(tmp_path, byte_level_vocab):
  tokens, types, merges = byte_level_vocab
  path = _write_tokenizer_gguf(
    tmp_path / "bpe.gguf", "gpt2", tokens, types=types, merges=merges, pre="made-up-pre"
  )
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre='made-up-pre' is not supported"):
    tokenizer_from_gguf(path)


def test_missing_merges_named(tmp_path):
  path = _write_tokenizer_gguf(tmp_path / "bpe.gguf", "gpt2", ["a", "b"], pre="gpt-2")
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.merges"):
    tokenizer_from_gguf(path)


def test_no_tokenizer_gives_none(tmp_path):
  import gguf  # pylint: disable=import-outside-toplevel

  path = os.fspath(tmp_path / "none.gguf")
  w = gguf.GGUFWriter(path, "llama")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  assert tokenizer_from_gguf(path) is None
  assert tokenizer_from_gguf(_write_tokenizer_gguf(tmp_path / "nv.gguf", "no_vocab", ["a"])) is None
