"""Generation: padding/bucketing invariance, stopping, sampling modes, no retrace, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import ps_jax
from ps_jax import generation
from ps_jax.cache import KVCache
from ps_jax.generation import SamplingConfig, generate_ids, sample

N_NEW = 12


@pytest.fixture(scope="module")
def llama(tiny):
  return tiny("llama")[1]


@pytest.fixture(scope="module")
def prompts():
  # A: 6 tokens; with a 14-token (same bucket 16), a 3-token and a 20-token (bucket 32) one.
  return dict(zip("ALSX", helpers.random_prompts([6, 14, 3, 20], seed=7), strict=True))


def _no_stop(*results_or_lists):
  """A stop id absent from all given token lists, so generation runs to max_new_tokens."""
  used = set()
  for r in results_or_lists:
    used |= set(np.asarray(r).ravel().tolist())
  return next(i for i in range(helpers.VOCAB) if i not in used)


@pytest.fixture(scope="module")
def alone(llama, prompts):
  """Greedy result for prompt A alone, with a stop id that does not occur."""
  probe = generate_ids(llama, [prompts["A"]], max_new_tokens=N_NEW, stop_ids=[0])
  stop = _no_stop(probe.tokens)
  res = generate_ids(llama, [prompts["A"]], max_new_tokens=N_NEW, stop_ids=[stop])
  assert res.num_tokens.tolist() == [N_NEW]
  return stop, res


def _row_kv(cache: KVCache, row: int, n: int) -> np.ndarray:
  return np.concatenate([np.asarray(cache.k)[:, row, :n], np.asarray(cache.v)[:, row, :n]])


@pytest.mark.parametrize("batch", ["ALS", "SAL", "AX"])
def test_padding_and_bucket_never_change_a_prompt(llama, prompts, alone, batch):
  """A alone == A in a batch with longer/shorter prompts (bucket 16 or 32): tokens and KV."""
  stop, ref = alone
  res = generate_ids(llama, [prompts[c] for c in batch], max_new_tokens=N_NEW, stop_ids=[stop])
  i = batch.index("A")
  assert res.tokens[i].tolist() == ref.tokens[0].tolist()
  n = len(prompts["A"]) + N_NEW
  assert int(res.cache.end_index[i]) == n
  diff = float(np.abs(_row_kv(res.cache, i, n) - _row_kv(ref.cache, 0, n)).max())
  print(f"\n[{batch}] cache KV of prompt A: alone vs batched {diff:.1e}")
  assert diff <= 1e-5


def test_padding_never_changes_logits(llama, prompts):
  fwd = helpers.jit_forward(llama)
  a = prompts["A"]
  alone = fwd(*helpers.right_pad([a]))
  for width in (16, 32):
    tokens, lengths = helpers.right_pad([prompts["L"], a, prompts["S"]], width)
    batched = fwd(tokens, lengths)
    diff = float(np.abs(batched[1, : len(a)] - alone[0]).max())
    print(f"\n[width {width}] logits of prompt A: alone vs batched {diff:.1e}")
    assert diff <= 1e-5


def test_returned_cache_equals_prefill_of_the_whole_sequence(llama, prompts, alone):
  """The cache after generation holds prompt + every generated token (last one included)."""
  _, res = alone
  seq = list(prompts["A"]) + res.tokens[0].tolist()
  _, full = helpers.jit_model(llama)(
    jnp.asarray([seq]), cache=KVCache.init(llama.config, 1, len(seq))
  )
  diff = float(np.abs(_row_kv(res.cache, 0, len(seq)) - _row_kv(full, 0, len(seq))).max())
  assert diff <= 1e-5
  assert res.prompt_lengths.tolist() == [len(prompts["A"])]


def test_position_offsets_without_prefix_do_not_change_tokens(llama, prompts, alone):
  """RoPE is relative: shifting a prompt's positions (no prefix) keeps its greedy tokens."""
  stop, ref = alone
  res = generate_ids(
    llama, [prompts["A"]], max_new_tokens=N_NEW, stop_ids=[stop], position_offsets=[37]
  )
  assert res.tokens.tolist() == ref.tokens.tolist()


def test_stops_at_first_stop_id_and_pads(llama, prompts, alone):
  _, ref = alone
  greedy = ref.tokens[0].tolist()
  j = 4
  stop = greedy[j]
  first = greedy.index(stop)  # the stop token may already occur before position j
  pad = _no_stop(ref.tokens, [stop])
  res = generate_ids(
    llama, [prompts["A"], prompts["L"]], max_new_tokens=N_NEW, stop_ids=[pad, stop]
  )
  assert int(res.num_tokens[0]) == first + 1  # the stop token is counted
  assert res.tokens[0, : first + 1].tolist() == greedy[: first + 1]
  assert (res.tokens[0, first + 1 :] == pad).all()  # later entries are stop_ids[0]
  assert int(res.cache.end_index[0]) == len(prompts["A"]) + first + 1
  # The other row is unaffected by row 0 stopping.
  other = generate_ids(llama, [prompts["L"]], max_new_tokens=N_NEW, stop_ids=[pad, stop])
  assert res.tokens[1].tolist() == other.tokens[0].tolist()
  assert int(res.num_tokens[1]) == int(other.num_tokens[0])


def test_top_k_1_equals_greedy(llama, prompts, alone):
  stop, ref = alone
  res = generate_ids(
    llama,
    [prompts["A"]],
    max_new_tokens=N_NEW,
    stop_ids=[stop],
    sampling=SamplingConfig(temperature=1.5, top_k=1),
    rng=jax.random.key(3),
  )
  assert res.tokens.tolist() == ref.tokens.tolist()


def test_tiny_top_p_equals_greedy(llama, prompts, alone):
  stop, ref = alone
  res = generate_ids(
    llama,
    [prompts["A"]],
    max_new_tokens=N_NEW,
    stop_ids=[stop],
    sampling=SamplingConfig(temperature=1.5, top_p=1e-6),
    rng=jax.random.key(4),
  )
  assert res.tokens.tolist() == ref.tokens.tolist()


def test_temperature_sampling_deterministic_per_key(llama, prompts, alone):
  stop, ref = alone
  hot = SamplingConfig(temperature=1.0)

  def run(seed):
    return generate_ids(
      llama,
      [prompts["A"], prompts["A"]],
      max_new_tokens=N_NEW,
      stop_ids=[stop],
      sampling=hot,
      rng=jax.random.key(seed),
    ).tokens

  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert a.tolist() != c.tolist()
  assert a[0].tolist() != a[1].tolist()  # rows draw independently
  assert a[0].tolist() != ref.tokens[0].tolist()  # temperature 1 is not greedy here


def test_sample_top_k_and_top_p_sets():
  """`sample` keeps exactly the top-k set / the smallest top-p nucleus (frequencies too)."""
  probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
  logits = jnp.asarray(np.log(probs))[None, :]
  keys = jax.random.split(jax.random.key(0), 4000)

  def draws(cfg):
    return np.asarray(jax.vmap(lambda k: sample(logits, k, cfg)[0])(keys))

  k2 = draws(SamplingConfig(temperature=1.0, top_k=2))
  assert set(k2.tolist()) == {0, 1}
  assert abs((k2 == 0).mean() - 0.5 / 0.8) < 0.03
  p6 = draws(SamplingConfig(temperature=1.0, top_p=0.6))
  assert set(p6.tolist()) == {0, 1}
  p5 = draws(SamplingConfig(temperature=1.0, top_p=0.5))  # the top token alone reaches 0.5
  assert set(p5.tolist()) == {0}
  full = draws(SamplingConfig(temperature=1.0))
  np.testing.assert_allclose(np.bincount(full, minlength=4) / len(full), probs, atol=0.03)
  assert int(sample(logits, keys[0], SamplingConfig())[0]) == 0  # greedy


def test_no_retrace_within_a_bucket(llama):
  """Prompt lengths 5 and 9 (bucket 16) compile once; length 17 (bucket 48) compiles again."""
  p5, p9, p17 = helpers.random_prompts([5, 9, 17], seed=11)
  p5b, p9b = helpers.random_prompts([5, 9], seed=12)
  buckets = (16, 48)  # 48: a bucket no other test uses, so its programs are surely new

  def run(batch):
    return generate_ids(llama, batch, max_new_tokens=N_NEW, stop_ids=[0, 1], length_buckets=buckets)

  run([p5, p9])  # warm up
  sizes = (generation._prefill._cache_size(), generation._decode._cache_size())  # pylint: disable=protected-access
  with helpers.count_compiles() as same:
    run([p9b, p5b])
    run([p5, p5b])
  assert same.compiles == 0 and same.traces == 0
  assert (generation._prefill._cache_size(), generation._decode._cache_size()) == sizes  # pylint: disable=protected-access
  with helpers.count_compiles() as other:
    run([p17, p5])
  assert other.compiles >= 2  # the counter works: a new bucket compiles prefill and decode
  assert generation._prefill._cache_size() == sizes[0] + 1  # pylint: disable=protected-access
  assert generation._decode._cache_size() == sizes[1] + 1  # pylint: disable=protected-access


def test_public_generate_with_tokenizer(tmp_path):
  """ps.load on a folder with a tokenizer; ps.generate takes text, returns text."""
  tiny = helpers.tiny_hf_model("llama", tmp_path)
  helpers.tiny_tokenizer(tmp_path)
  model, tokenizer = ps_jax.load(tmp_path)
  assert tokenizer is not None and tokenizer.eos_token_id == 2
  questions = ["What is the capital?", "One plus"]
  texts = ps_jax.generate(model, tokenizer, questions, max_new_tokens=6)
  assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
  # Same as generate_ids on the chat-templated ids, decoded.
  ids = generation.encode_prompts(tokenizer, questions)
  assert tokenizer.decode(ids[0]).startswith("<s>user: What is the capital?</s>")
  stops = generation.stop_ids_for(model, tokenizer)
  assert stops == [2]
  res = generate_ids(model, ids, max_new_tokens=6, stop_ids=stops)
  assert texts == generation.decode_texts(tokenizer, res, stops)
  del tiny


# --- bad input: each error names the problem ---------------------------------------------


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(prompts=[[5, 6], []]), "prompt 1 is empty"),
    (dict(prompts=[]), "prompts is empty"),
    (dict(stop_ids=[]), "stop_ids is empty"),
    (dict(prompts=[[5] * 10], max_prompt_tokens=8), "10 tokens, above max_prompt_tokens=8"),
    (dict(prompts=[[5] * 250], max_new_tokens=10), "max_position_embeddings=256"),
    (dict(prompts=[[5] * 10], position_offsets=[250]), "max_position_embeddings=256"),
    (
      dict(prompts=[[5] * 40], length_buckets=(16, 32)),
      "prompt length is 40, above the largest configured bucket 32",
    ),
  ],
)
def test_bad_input_raises_named_error(llama, kwargs, match):
  args = dict(prompts=[[5, 6, 7]], max_new_tokens=4, stop_ids=[2])
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    generate_ids(llama, args.pop("prompts"), **args)


@pytest.mark.parametrize("bad_id", [helpers.VOCAB + 44, -3])
def test_out_of_vocab_prompt_ids_raise(llama, bad_id):
  with pytest.raises(ValueError, match=f"vocab_size={helpers.VOCAB}"):
    generate_ids(llama, [[5, bad_id]], max_new_tokens=N_NEW, stop_ids=[2])


@pytest.mark.parametrize("n", [0, -1])
def test_nonpositive_max_new_tokens_named(llama, n):
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate_ids(llama, [[5, 6]], max_new_tokens=n, stop_ids=[2])


# --- bad arguments of the public entry point: each error names the argument and its range ---

_TOKENIZER = object()  # never used: the argument checks come first


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (
      dict(temperature=-0.5),
      r"temperature=-0\.5 is outside the allowed range: a finite number "
      r">= 0",
    ),
    (dict(temperature=float("nan")), r"temperature=nan is outside the allowed range"),
    (dict(top_p=0.0), r"top_p=0\.0 is outside the allowed range \(0, 1\]"),
    (dict(top_p=1.5), r"top_p=1\.5 is outside the allowed range \(0, 1\]"),
    (dict(top_k=-1), r"top_k=-1 is outside the allowed range: an integer >= 0"),
    (dict(top_k=2.5), r"top_k=2\.5 is outside the allowed range: an integer >= 0"),
    (dict(max_new_tokens=0), r"max_new_tokens=0 is outside the allowed range: an integer >= 1"),
    (dict(max_new_tokens=-3), r"max_new_tokens=-3 is outside the allowed range"),
  ],
)
def test_public_generate_rejects_bad_sampling_arguments(llama, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ps_jax.generate(llama, _TOKENIZER, [[5, 6, 7]], **kwargs)


def test_public_generate_needs_a_tokenizer(llama):
  with pytest.raises(ValueError, match=r"generate: tokenizer=None, but it returns texts"):
    ps_jax.generate(llama, None, [[5, 6, 7]], max_new_tokens=2)


@pytest.mark.parametrize(
  "kwargs,name",
  [(dict(temperature=-1.0), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k")],
)
def test_sampling_config_is_validated_where_it_is_built(kwargs, name):
  """launch.generate and generate_ids callers build SamplingConfig themselves: same checks."""
  with pytest.raises(ValueError, match=f"^{name}="):
    SamplingConfig(**kwargs)
  assert SamplingConfig(temperature=0.6, top_p=1, top_k=0).top_p == 1  # the edges are allowed
