"""Cache continuation: a continued agent turn equals a full re-prefill of the same tokens, and
the captured branch caches (memory modes) equal fixed-text encodings and feed `synthesize`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from ps_jax.agents import (
  MEMORY_MODES,
  AgentSession,
  ModelPolicy,
  ReactConfig,
  ToolRegistry,
  capture_branches,
)
from ps_jax.agents.react import run_react
from ps_jax.buckets import DEFAULT_LENGTH_BUCKETS, bucket
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import synthesize
from ps_jax.workers import encode_branches

TOL = 1e-4
# The tiny models have 256 positions: keep the synthesizer prompts short.
SHORT = PromptTemplates(
  system=None, text_synthesizer="{contexts}\n{question}", latent_synthesizer="{question}"
)
STOP = [2]
CAPACITY = 128  # the tiny tests' turns fit: the cache never regrows (fewer compiles)


_FORWARDS = {}


def _full_logits(model, rows):
  """One-shot forward (no cache, not chunked) of each row from position 0: [B, T, V]."""
  # Padded to a length bucket: one compile serves several turns.
  t = bucket(max(len(r) for r in rows), DEFAULT_LENGTH_BUCKETS, what="test rows")
  tokens, lengths = helpers.right_pad(rows, t)
  if id(model) not in _FORWARDS:  # one jitted function per model: shapes recompile, not Python
    graphdef, params = nnx.split(model)

    @jax.jit
    def call(params, tokens, lengths):
      m = nnx.merge(graphdef, params)
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
      return m(tokens, positions, None, lengths=lengths)[0]

    _FORWARDS[id(model)] = (call, params)
  call, params = _FORWARDS[id(model)]
  return np.asarray(call(params, jnp.asarray(tokens), jnp.asarray(lengths)))


def _parity(session, model, ids):
  """Max |continued - re-prefilled| logit over the new tokens of the rows with ids."""
  starts = [
    min(_lcp(h, r), len(r) - 1) if r is not None else 0
    for h, r in zip(session.history, ids, strict=True)
  ]
  got = np.asarray(session.extend(ids, reserve=4, return_logits=True))
  ref = _full_logits(model, [r if r is not None else [1] for r in ids])
  worst = 0.0
  for n, r in enumerate(ids):
    if r is not None:
      new = len(r) - starts[n]
      worst = max(worst, float(np.abs(got[n, :new] - ref[n, starts[n] : len(r)]).max()))
  return worst


def _lcp(a, b):
  i = 0
  while i < min(len(a), len(b)) and a[i] == b[i]:
    i += 1
  return i


def test_continued_turns_equal_full_reprefill(tiny):
  _, model = tiny("llama")
  rng = np.random.default_rng(0)
  session = AgentSession(model, 3, stop_ids=STOP, capacity=CAPACITY)
  prompts = [list(rng.integers(3, 384, size=n)) for n in (5, 11, 17)]
  worst = [_parity(session, model, prompts)]
  session.decode([True] * 3, max_new_tokens=4)
  # Turn 2: each agent's observation + next header appended (different lengths).
  ids = [
    h + list(rng.integers(3, 384, size=n)) for h, n in zip(session.history, (3, 9, 1), strict=True)
  ]
  assert all(len(h) > 0 for h in session.history)
  worst.append(_parity(session, model, ids))
  assert session.reprefilled_tokens.tolist() == [0, 0, 0]  # the history was not re-prefilled
  session.decode([True] * 3, max_new_tokens=4)
  # Turn 3: agent 1 is done (row untouched); agent 2's last 2 tokens are rolled back (as a cut
  # hallucinated <tool_response>) and replaced.
  hist1 = list(session.history[1])
  ids = [
    session.history[0] + list(rng.integers(3, 384, size=6)),
    None,
    session.history[2][:-2] + list(rng.integers(3, 384, size=4)),
  ]
  worst.append(_parity(session, model, ids))
  assert session.reprefilled_tokens.tolist() == [0, 0, 2]
  out = session.decode([True, False, True], max_new_tokens=3)
  assert out[1] is None and session.history[1] == hist1
  assert int(session.cache.end_index[1]) == len(hist1)
  # Turn 4 after the inactive row: all three continue again.
  ids = [
    h + list(rng.integers(3, 384, size=n)) for h, n in zip(session.history, (2, 5, 3), strict=True)
  ]
  worst.append(_parity(session, model, ids))
  print("continuation parity (max |logit diff| per turn):", worst)
  assert max(worst) <= TOL, worst
  # Every token was prefilled or decoded once, except the 2 rolled back (no history re-prefill).
  decoded = sum(t.output_len for turns in session.turns for t in turns)
  stops = sum(len(h) for h in session.history) - int(session.prefilled_tokens.sum()) - decoded
  assert 0 <= stops + 2 <= len(session.turns) * 4  # only trailing stop tokens are unaccounted


def test_decode_matches_greedy_from_full_prefill(tiny):
  """A continued turn decodes the same tokens as generating from the whole sequence."""
  from ps_jax.generation import generate_ids  # pylint: disable=import-outside-toplevel

  _, model = tiny("llama")
  rng = np.random.default_rng(1)
  session = AgentSession(model, 2, stop_ids=STOP)  # grows: 16 slots at first
  first = [list(rng.integers(3, 384, size=n)) for n in (7, 4)]
  session.turn(first, 5)
  ids = [
    h + list(rng.integers(3, 384, size=n)) for h, n in zip(session.history, (3, 8), strict=True)
  ]
  got = session.turn(ids, 6)
  assert session.cache.max_len > 16  # the cache grew between turns
  ref = generate_ids(model, ids, max_new_tokens=6, stop_ids=STOP)
  for n in range(2):
    assert got[n] == [int(t) for t in ref.tokens[n, : ref.num_tokens[n]]]


def _two_turn_session(model, rng):
  session = AgentSession(model, 3, stop_ids=STOP, capacity=CAPACITY)
  session.turn([list(rng.integers(3, 384, size=n)) for n in (6, 10, 8)], 5)
  ids = [
    h + list(rng.integers(3, 384, size=n)) for h, n in zip(session.history, (4, 2, 7), strict=True)
  ]
  session.turn(ids, 6)
  return session


def test_memory_modes_equal_fixed_text_encodings(tiny):
  _, model = tiny("llama")
  session = _two_turn_session(model, np.random.default_rng(2))
  captured = {m: capture_branches(session, None, [1, 1, 1], m) for m in MEMORY_MODES}
  for n in range(3):
    last = session.turns[n][-1]
    hist = session.history[n]
    final = hist[last.output_start : last.output_start + last.output_len]
    full = hist[: last.output_start + last.output_len]
    each = [hist[s] for s in session.branch_slots(n, "each_turn_output")]
    assert len(session.turns[n]) == 2 and captured["each_turn_output"].token_ids[n][0] == each
    assert len(each) == sum(t.output_len for t in session.turns[n]) > len(final)
    refs = {
      "final_output": (
        final,
        encode_branches(model, None, [[final]], prefixes=[full[: -len(final)]]),
      ),
      "full_prompt_output": (full, encode_branches(model, None, [[full]])),
    }
    for mode, (toks, ref) in refs.items():
      got = captured[mode]
      assert got.token_ids[n][0] == toks
      length = len(toks)
      assert int(got.caches.lengths[n, 0]) == length
      for a, b in ((got.caches.k, ref.caches.k), (got.caches.v, ref.caches.v)):
        diff = np.abs(np.asarray(a[:, n, 0, :length]) - np.asarray(b[:, 0, 0, :length])).max()
        assert diff <= TOL, (mode, diff)
      np.testing.assert_array_equal(
        np.asarray(got.caches.positions[n, 0, :length]),
        np.asarray(ref.caches.positions[0, 0, :length]),
      )


def test_synthesize_runs_on_captured_branches(tiny):
  tiny_hf, model = tiny("llama")
  tokenizer = helpers.tiny_tokenizer()
  policy = ModelPolicy(model, tokenizer, max_new_tokens=6, capacity=CAPACITY)
  convs = [[{"role": "user", "content": f"What is {i} plus one?"}] for i in range(3)]
  traces = run_react(policy, ToolRegistry(), convs, ReactConfig(max_steps=2))
  assert all(t.stop_reason for t in traces)
  del tiny_hf
  for mode in ("final_output", "each_turn_output", "full_prompt_output"):
    branches = policy.branches([3], mode)
    assert branches.caches.lengths.shape[0] == 1
    assert int(branches.caches.num_branches()[0]) == 3
  branches = policy.branches([3], "final_output")
  assert [len(t) for t in branches.token_ids[0]] == [
    int(x) for x in np.asarray(branches.caches.lengths[0, :3])
  ]
  for method in ("text", "pcw", "parallel_synthesis"):
    result = synthesize(model, tokenizer, branches, ["1 + 1?"], method, None, 4, templates=SHORT)
    assert len(result.texts) == 1 and result.generated_tokens[0] >= 1


@pytest.mark.slow
def test_smollm2_continued_turn_equals_reprefill(smollm2):
  model, tokenizer = smollm2
  policy = ModelPolicy(model, tokenizer, max_new_tokens=8)
  policy.reset(1)
  conv = [{"role": "user", "content": "Name a prime number."}]
  from ps_jax.generation import encode_prompts  # pylint: disable=import-outside-toplevel

  out = policy([conv], [True])[0]
  conv = conv + [
    {"role": "assistant", "content": out.strip()},
    {"role": "user", "content": "<tool_response>\n7 is prime.\n</tool_response>"},
  ]
  ids = encode_prompts(tokenizer, [conv])[0]
  session = policy.session
  start = min(_lcp(session.history[0], ids), len(ids) - 1)
  got = np.asarray(session.extend([ids], return_logits=True))[0, : len(ids) - start]
  # The release re-prefills the whole conversation: here through the same chunked prefill
  # from an empty cache (as generate_ids), and through the one-shot unchunked forward.
  fresh = AgentSession(model, 1, stop_ids=policy.stop_ids)
  ref = np.asarray(fresh.extend([ids], return_logits=True))[0, start : len(ids)]
  one_shot = _full_logits(model, [ids])[0, start : len(ids)]
  diff = float(np.abs(got - ref).max())
  diff_one_shot = float(np.abs(got - one_shot).max())
  print(
    f"SmolLM2 continued turn: {len(ids) - start} new tokens after {start} kept, re-prefilled "
    f"{int(session.reprefilled_tokens[0])}, max |diff| vs chunked re-prefill {diff:.2e}, "
    f"vs one-shot forward {diff_one_shot:.2e}"
  )
  assert start > len(ids) // 2  # most of the conversation came from the cache
  assert diff <= TOL and diff_one_shot <= 2 * TOL
