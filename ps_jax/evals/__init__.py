"""Model-independent evaluation harness: dataset loaders, answer scorers, code sandbox.

Nothing here imports jax or the model, so scoring can run on any machine.
"""

from ps_jax.evals.datasets import (
  DATASETS,
  EvalExample,
  format_question,
  load_eval_dataset,
)
from ps_jax.evals.sandbox import SandboxLimits, run_code, sandbox_isolation
from ps_jax.evals.scorers import (
  extract_boxed,
  extract_choice_letter,
  extract_code,
  extract_final_answer,
  extract_math_answer,
  math_equal,
  normalize_answer,
  score_choice,
  score_code,
  score_exact_match,
  score_example,
  score_math,
)

__all__ = [
  "DATASETS",
  "EvalExample",
  "SandboxLimits",
  "extract_boxed",
  "extract_choice_letter",
  "extract_code",
  "extract_final_answer",
  "extract_math_answer",
  "format_question",
  "load_eval_dataset",
  "math_equal",
  "normalize_answer",
  "run_code",
  "sandbox_isolation",
  "score_choice",
  "score_code",
  "score_exact_match",
  "score_example",
  "score_math",
]
