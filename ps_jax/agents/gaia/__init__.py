"""GAIA: the gated benchmark loaded from a local copy, its two scorers (the release's and the
leaderboard's), and gaia-files, an offline task set in its format generated at run time."""

from ps_jax.agents.gaia.data import REPO_ID, GaiaTask, load_gaia, load_gaia_hub
from ps_jax.agents.gaia.files_tasks import KINDS, gaia_files_tasks, write_pdf
from ps_jax.agents.gaia.scoring import (
  HIDDEN_ANSWER,
  extract_answer_text,
  score_official,
  score_release,
)

__all__ = [
  "HIDDEN_ANSWER",
  "KINDS",
  "REPO_ID",
  "GaiaTask",
  "extract_answer_text",
  "gaia_files_tasks",
  "load_gaia",
  "load_gaia_hub",
  "score_official",
  "score_release",
  "write_pdf",
]
