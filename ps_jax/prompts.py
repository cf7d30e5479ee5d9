"""Prompt templates for workers and the synthesizer (configurable; reference wording in spirit)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class PromptTemplates:
  system: str | None = "You are a helpful assistant."
  worker: str = (
    "Question:\n{question}\n\nSolve the question step by step and clearly state "
    "the final answer at the end.\n\nYour response:"
  )
  # Text synthesis: the branch outputs are pasted into the prompt.
  text_synthesizer: str = (
    "You are a task summarizer. Several agents worked on the question below in parallel.\n"
    "Use the content from the previous agents as reference when helpful and give the final "
    "answer.\n\nContent from Previous Agents:\n{contexts}\n\nInput Question:\n{question}\n\n"
    "Your response:"
  )
  # Cache synthesis: the branch outputs are read from their KV caches instead.
  latent_synthesizer: str = (
    "You are a task summarizer. Several agents worked on the question below in parallel.\n"
    "You are provided with latent information from the previous agents as reference; give "
    "the final answer.\n\nInput Question:\n{question}\n\nYour response:"
  )
  agent_header: str = "Agent {index}:\n"

  def messages(self, user: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": self.system}] if self.system else []
    return msgs + [{"role": "user", "content": user}]

  def worker_messages(self, question: str) -> list[dict[str, str]]:
    return self.messages(self.worker.format(question=question))

  def text_synthesizer_messages(self, question: str, branch_texts: Sequence[str]):
    contexts = "\n\n".join(
      self.agent_header.format(index=i + 1) + t.strip() for i, t in enumerate(branch_texts)
    )
    return self.messages(self.text_synthesizer.format(question=question, contexts=contexts))

  def latent_synthesizer_messages(self, question: str):
    return self.messages(self.latent_synthesizer.format(question=question))
