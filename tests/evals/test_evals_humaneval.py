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
