"""MARBLE database diagnosis (MultiAgentBench, MIT): cases, a local PostgreSQL environment
with ps_jax's own anomaly triggers, the release's label scorer and the chance baseline."""

from ps_jax.agents.marble.cases import SHA256, Agent, MarbleCase, default_path, load_cases
from ps_jax.agents.marble.env import SETTLE_S, SetupReport, query_tool, setup_case
from ps_jax.agents.marble.scoring import (
  chance_baseline,
  correct,
  extract_predicted_root_causes,
  score_case,
  score_prediction,
  summarize,
  task_score,
)
from ps_jax.agents.marble.triggers import ANOMALIES, TriggerParams, run_trigger

__all__ = [
  "ANOMALIES",
  "SETTLE_S",
  "SHA256",
  "Agent",
  "MarbleCase",
  "SetupReport",
  "TriggerParams",
  "chance_baseline",
  "correct",
  "default_path",
  "extract_predicted_root_causes",
  "load_cases",
  "query_tool",
  "run_trigger",
  "score_case",
  "score_prediction",
  "setup_case",
  "summarize",
  "task_score",
]
