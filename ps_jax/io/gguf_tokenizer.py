"""The tokenizer of a GGUF file, built from the file's own metadata without torch.

A GGUF carries no tokenizer.json, only llama.cpp's `tokenizer.*` metadata: the token list, the
merges (or scores), token types, special token ids, add_bos/add_eos flags, the pre-tokenizer
name and the chat template. transformers can read them (`AutoTokenizer(gguf_file=...)`) but
imports torch to do so; here the `tokenizers` library builds the tokenizer and transformers'
`PreTrainedTokenizerFast` (importable without torch) wraps it, so `apply_chat_template`,
`decode`, special tokens and `eos_token_id` behave as with any transformers tokenizer.

`tokenizer.ggml.model` values:
  "gpt2"  byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2). Text is split before BPE the way
          llama.cpp splits it for the file's `tokenizer.ggml.pre`. For "smollm" that means
          digits one by one first, as SmolLM's own tokenizer.json (Digits + ByteLevel) does;
          transformers 5.24's GGUF reader skips that split, so "x  1" gives [x, ĠĠ, 1] here and
          [x, Ġ, Ġ, 1] there (SmolLM2 has no merges with digits, so only whitespace runs before
          a digit and non-ASCII numerals such as " ½" differ).
  "llama" SentencePiece BPE with byte fallback (Llama 1/2, Mistral); merges come from the file
          or, as in transformers, from the token scores.
Anything else raises a ValueError naming the value; "none"/"no_vocab" (and no tokenizer
metadata at all) mean the file has no tokenizer: `tokenizer_from_gguf` returns None.
"""

from __future__ import annotations

import os

# llama.cpp's token types (gguf.TokenType), spelled out to keep `gguf` out of this import.
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

_LLAMA3 = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS = r"\p{N}"
_GPT2 = None  # GPT-2's split regex, applied by ByteLevel itself (as in GPT-2's tokenizer.json)

# tokenizer.ggml.pre -> regexes applied one after the other (llama.cpp's llm_tokenizer_bpe):
# each splits every piece into matches and the text between them.
_PRE_SPLITS = {
  # llama.cpp's name for a tokenizer its converter did not recognise; GPT-2's split is the
  # usual reading (transformers' too) and what a plain ByteLevel tokenizer.json does.
  "default": (_GPT2,),
  **dict.fromkeys(("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais", "exaone4"), (_GPT2,)),
  **dict.fromkeys(
    ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
    (_DIGITS, _GPT2),
  ),
  **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), (_LLAMA3,)),
  **dict.fromkeys(("qwen2", "megrez", "stablelm2", "deepseek-r1-qwen"), (_QWEN2,)),
}
# llama.cpp uses a word that is itself in the vocabulary without merging for these (as
# Llama 3's tokenizer.json, "ignore_merges": true), and adds BOS unless the file says otherwise.
_LLAMA3_PRES = ("llama3", "llama-v3", "llama-bpe", "falcon3")

# SentencePiece GGUFs whose architectures need a tokenizer shape the file does not describe
# (transformers special-cases them); refused rather than tokenized subtly wrong.
_SPM_UNSUPPORTED_ARCHS = ("gemma", "gemma2", "gemma3", "gemma3n", "phi3")

_NO_TOKENIZER = ("none", "no_vocab")


def tokenizer_from_gguf(path_or_reader):
  """A transformers `PreTrainedTokenizerFast` for a GGUF file, or None if it has no tokenizer.

  The add_bos default, when the file has no tokenizer.ggml.add_bos_token, is llama.cpp's: on for
  SentencePiece and Llama 3 vocabularies, off for other byte-level ones.

  `path_or_reader`: a .gguf path or a `gguf.GGUFReader`. Raises ValueError for a tokenizer kind
  or pre-tokenizer this module cannot build faithfully, naming the metadata key and value.
  """
  if isinstance(path_or_reader, (str, os.PathLike)):
    import gguf  # pylint: disable=import-outside-toplevel

    reader = gguf.GGUFReader(os.fspath(path_or_reader))
    name = os.fspath(path_or_reader)
  else:
    reader, name = path_or_reader, ""
  meta = _Metadata(reader)
  kind = meta.get("tokenizer.ggml.model")
  if kind is None or kind in _NO_TOKENIZER:
    return None
  if kind == "gpt2":
    tok, add_bos = _byte_level_bpe(meta)
  elif kind == "llama":
    tok, add_bos = _sentencepiece_bpe(meta)
  else:
    raise ValueError(
      f"GGUF tokenizer.ggml.model={kind!r} is not supported: only 'gpt2' (byte-level BPE) "
      f"and 'llama' (SentencePiece BPE) can be built from GGUF metadata here; use a local "
      f"transformers folder with tokenizer.json for this model"
    )
  return _wrap(tok, meta, add_bos, name)


class _Metadata:
  """Reads `tokenizer.*` / `general.*` values of a GGUFReader on demand (arrays as lists)."""

  def __init__(self, reader):
    self._fields = reader.fields
    self._tokens = None

  def get(self, key: str, default=None):
    field = self._fields.get(key)
    return default if field is None else field.contents()

  def require(self, key: str, why: str):
    value = self.get(key)
    if value is None:
      raise ValueError(f"GGUF metadata has no {key!r}, needed for {why}")
    return value

  def tokens(self) -> list[str]:
    if self._tokens is None:
      tokens = self.require("tokenizer.ggml.tokens", "any tokenizer")
      # llama.cpp renames empty tokens so that every id keeps a distinct string.
      self._tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    return self._tokens

  def special_token(self, key: str) -> str | None:
    """The token whose id `tokenizer.ggml.<key>` holds, or None if the file names none."""
    i = self.get(f"tokenizer.ggml.{key}")
    if i is None:
      return None
    tokens = self.tokens()
    if not 0 <= i < len(tokens):
      raise ValueError(f"GGUF tokenizer.ggml.{key}={i} is outside the {len(tokens)} tokens")
    return tokens[i]

  def token_types(self, n: int) -> list[int]:
    types = self.get("tokenizer.ggml.token_type")
    if types is None:
      return [_NORMAL] * n
    if len(types) != n:
      raise ValueError(f"GGUF tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    return list(types)


def _byte_level_bpe(meta: _Metadata):
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE_SPLITS:
    raise ValueError(
      f"GGUF tokenizer.ggml.pre={pre!r} is not supported (a byte-level BPE must split text "
      f"exactly as it was trained; known: {sorted(_PRE_SPLITS)})"
    )
  tokens = meta.tokens()
  merges = [
    tuple(m.split(" ", 1))
    for m in meta.require("tokenizer.ggml.merges", "a 'gpt2' (byte-level BPE) tokenizer")
  ]
  tok = Tokenizer(
    models.BPE(
      vocab={t: i for i, t in enumerate(tokens)},
      merges=merges,
      dropout=None,
      fuse_unk=False,
      byte_fallback=False,
      ignore_merges=pre in _LLAMA3_PRES,
    )
  )
  splits = _PRE_SPLITS[pre]
  steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits if r is not None]
  steps.append(
    pre_tokenizers.ByteLevel(
      add_prefix_space=False, trim_offsets=True, use_regex=splits[-1] is _GPT2
    )
  )
  tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
  tok.decoder = decoders.ByteLevel()
  return tok, pre in _LLAMA3_PRES


def _sentencepiece_bpe(meta: _Metadata):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

  arch = meta.get("general.architecture")
  if arch in _SPM_UNSUPPORTED_ARCHS:
    raise ValueError(
      f"GGUF tokenizer.ggml.model='llama' for general.architecture={arch!r} is "
      f"not supported: its tokenizer differs from plain SentencePiece BPE"
    )
  tokens = meta.tokens()
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = meta.get("tokenizer.ggml.merges")
  if merges is not None:
    merges = [tuple(m.split(" ", 1)) for m in merges]
  else:
    scores = meta.require(
      "tokenizer.ggml.scores", "a 'llama' tokenizer without tokenizer.ggml.merges"
    )
    if len(scores) != len(tokens):
      raise ValueError(
        f"GGUF tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens"
      )
    merges = _merges_from_scores(tokens, scores, vocab)
  tok = Tokenizer(
    models.BPE(
      vocab=vocab,
      merges=merges,
      dropout=None,
      fuse_unk=True,
      byte_fallback=True,
      unk_token=meta.special_token("unknown_token_id"),
    )
  )
  # llama.cpp prefixes a space unless the file says otherwise; "first" (only at the start of the
  # text, not after each special token) is transformers' non-legacy Llama behaviour.
  prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(
    replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
  )
  steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  if prefix:
    steps.append(decoders.Strip(content=" ", left=1))
  tok.decoder = decoders.Sequence(steps)
  return tok, True


def _merges_from_scores(tokens, scores, vocab) -> list[tuple[str, str]]:
  """Merges implied by a scored vocabulary: every split of a token into two tokens, best
  merged-token score first (ties: longer left piece, then longer right piece, then file order),
  the order transformers derives, so both tokenize alike."""
  found = []
  for token, score in zip(tokens, scores, strict=True):
    pairs = [
      (token[:k], token[k:])
      for k in range(1, len(token))
      if token[:k] in vocab and token[k:] in vocab
    ]
    pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
    found.extend((score, left, right) for left, right in pairs)
  found.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
  return [(left, right) for _, left, right in found]


def _wrap(tok, meta: _Metadata, default_add_bos: bool, name: str):
  from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel

  tokens = meta.tokens()
  types = meta.token_types(len(tokens))
  # Control tokens (<|im_start|>, <s>) are matched whole and are special; user-defined ones
  # (<think>) are matched whole but decoded as text.
  tok.add_special_tokens(
    [
      AddedToken(t, special=True, normalized=False)
      for t, k in zip(tokens, types, strict=True)
      if k == _CONTROL
    ]
  )
  tok.add_tokens(
    [
      AddedToken(t, special=False, normalized=False)
      for t, k in zip(tokens, types, strict=True)
      if k == _USER_DEFINED
    ]
  )
  kwargs = dict(
    bos_token=meta.special_token("bos_token_id"),
    eos_token=meta.special_token("eos_token_id"),
    unk_token=meta.special_token("unknown_token_id"),
    pad_token=meta.special_token("padding_token_id"),
    add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
    add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
  )
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  chat_template = meta.get("tokenizer.chat_template")
  if chat_template is not None:
    kwargs["chat_template"] = chat_template
  return PreTrainedTokenizerFast(
    tokenizer_object=tok, name_or_path=name, clean_up_tokenization_spaces=False, **kwargs
  )


__all__ = ["tokenizer_from_gguf"]
