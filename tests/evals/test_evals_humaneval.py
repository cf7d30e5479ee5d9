"""All 164 HumanEval canonical solutions pass the sandbox; broken ones fail."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ps_jax.evals import load_eval_dataset, run_code, score_code
from ps_jax.evals.scorers import build_code_program

PROBLEMS = load_eval_dataset("humaneval")
WORKERS = 4  # runs are mostly interpreter start-up; 4 threads keep 2 cores busy


def _run_all(body_for) -> dict[str, tuple[bool, str]]:
  def run(e):
    program = build_code_program(body_for(e), e.code_prefix, e.test, e.entry_point)
    return e.id, run_code(program, 10.0)

  with ThreadPoolExecutor(WORKERS) as pool:
    return dict(pool.map(run, PROBLEMS))


def test_all_canonical_solutions_pass():
  assert len(PROBLEMS) == 164
  results = _run_all(lambda e: e.gold)
  failed = {k: d for k, (ok, d) in results.items() if not ok}
  assert not failed, failed


@pytest.mark.parametrize("body", ["    return None\n", "    pass\n"])
def test_wrong_solutions_fail(body):
  results = _run_all(lambda e: body)
  passed = [k for k, (ok, _) in results.items() if ok]
  assert not passed, passed


def test_chat_formatted_canonical_solution_scores():
  for e in PROBLEMS[:5]:
    chat = f"Here you go:\n```python\n{e.code_prefix}{e.gold}```\nHope this helps."
    assert score_code(chat, e.code_prefix, e.test, e.entry_point) == 1.0


# A wrong solution of HumanEval/0 that tries to end the run with status 0 before the tests fail.
_EARLY_EXITS = {
  "raise SystemExit(0)": "    return False\nraise SystemExit(0)\n",
  "sys.exit()": "    return False\nimport sys\nsys.exit()\n",
  "exit()": "    return False\nexit()\n",
  "quit()": "    return False\nquit()\n",
  "os._exit(0)": "    return False\nimport os\nos._exit(0)\n",
  "SystemExit inside the function": "    raise SystemExit(0)\n",
  "os._exit inside the function": "    import os\n    os._exit(0)\n",
  "sys.exit from an atexit hook": "    import atexit, sys\n    atexit.register(sys.exit)\n"
  "    raise SystemExit\n",
}


@pytest.mark.parametrize("body", list(_EARLY_EXITS.values()), ids=list(_EARLY_EXITS))
def test_early_exit_of_a_wrong_solution_fails(body):
  e = PROBLEMS[0]
  program = build_code_program(body, e.code_prefix, e.test, e.entry_point)
  passed, detail = run_code(program, 10.0)
  assert not passed, detail
  assert (
    score_code(f"```python\n{e.code_prefix}{body}```", e.code_prefix, e.test, e.entry_point) == 0.0
  )
