"""`search` and `visit` with the release's schemas over pluggable backends.

A backend is a callable `(tool_name, arguments) -> ToolOutput`:
- `ReplayBackend`: recorded responses keyed by tool name + canonical JSON arguments (a JSONL
  of {"tool", "arguments", "response"}); a miss answers `[offline] no recorded result for ...`
  with status "offline_miss" and is counted.
- `CorpusBackend`: a local document corpus; `search` ranks it with BM25 (Okapi, k1=1.5,
  b=0.75), `visit` returns a document by URL; unknown URLs are counted misses.
- `LiveBackend`: Serper search and Jina-reader visit for users with network and keys; it
  refuses (status "refused") without SERPER_KEY_ID / PS_JAX_ALLOW_NETWORK=1. Never used offline.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from ps_jax.agents.tools.registry import Tool, ToolOutput

SEARCH_TOP_K = 8
MAX_QUERIES, MAX_URLS = 6, 5
VISIT_MAX_CHARS = int(os.environ.get("VISIT_MAX_CHARS", "18000"))

SEARCH_SCHEMA = {
  "type": "object",
  "properties": {
    "query": {
      "type": ["string", "array"],
      "items": {"type": "string"},
      "description": "A query string or a list of query strings (at most 6).",
    }
  },
  "required": ["query"],
}
VISIT_SCHEMA = {
  "type": "object",
  "properties": {
    "url": {
      "type": ["string", "array"],
      "items": {"type": "string"},
      "description": "A URL or a list of URLs (at most 5).",
    },
    "goal": {"type": "string", "description": "What you want to find on the page(s)."},
  },
  "required": ["url"],
}
SEARCH_DESCRIPTION = "Web search: returns the top results (title, URL, snippet) for each query."
VISIT_DESCRIPTION = "Visit web pages (or a local file path) and return their text content."

Backend = Callable[[str, dict[str, Any]], ToolOutput]


def canonical_key(tool: str, arguments: dict[str, Any]) -> str:
  """The replay key: tool name + arguments as sorted, compact JSON."""
  return (
    tool + " " + json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  )


class ReplayBackend:
  """Recorded tool responses; misses are explicit and counted."""

  def __init__(self, records: Sequence[dict[str, Any]] = ()):
    self.store: dict[str, str] = {}
    self.hits = 0
    self.misses = 0
    for r in records:
      self.record(r["tool"], r["arguments"], r["response"])

  @classmethod
  def from_jsonl(cls, path: str | os.PathLike) -> ReplayBackend:
    with open(path, encoding="utf-8") as f:
      return cls([json.loads(line) for line in f if line.strip()])

  def record(self, tool: str, arguments: dict[str, Any], response: str) -> None:
    self.store[canonical_key(tool, arguments)] = response

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      for key, response in self.store.items():
        tool, args = key.split(" ", 1)
        f.write(json.dumps({"tool": tool, "arguments": json.loads(args), "response": response}))
        f.write("\n")

  def __call__(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
    key = canonical_key(tool, arguments)
    if key in self.store:
      self.hits += 1
      return ToolOutput(self.store[key])
    self.misses += 1
    return ToolOutput(f"[offline] no recorded result for {key}", "offline_miss")


_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
  return [t.lower() for t in _TOKEN.findall(text)]


class BM25:
  """Okapi BM25 over tokenized documents (idf = log(1 + (N - df + 0.5) / (df + 0.5)))."""

  def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75):
    self.k1, self.b = k1, b
    self.tf = [collections.Counter(d) for d in docs]
    self.len = [len(d) for d in docs]
    self.avg = sum(self.len) / max(len(docs), 1)
    df = collections.Counter(t for d in docs for t in set(d))
    n = len(docs)
    self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

  def scores(self, query: Sequence[str]) -> list[float]:
    out = []
    for tf, n in zip(self.tf, self.len, strict=True):
      s = 0.0
      for t in query:
        f = tf.get(t, 0)
        if f:
          s += (
            self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * n / self.avg))
          )
      out.append(s)
    return out


class CorpusBackend:
  """A local corpus of {"url", "title", "text"} documents: BM25 `search`, `visit` by URL."""

  def __init__(self, documents: Sequence[dict[str, str]], top_k: int = SEARCH_TOP_K):
    self.docs = list(documents)
    self.by_url = {d["url"]: d for d in self.docs}
    self.index = BM25([tokenize(d.get("title", "") + " " + d["text"]) for d in self.docs])
    self.top_k = top_k
    self.misses = 0

  def search(self, query: str) -> list[dict[str, str]]:
    scores = self.index.scores(tokenize(query))
    ranked = sorted(range(len(self.docs)), key=lambda i: -scores[i])
    return [self.docs[i] for i in ranked[: self.top_k] if scores[i] > 0]

  def __call__(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
    if tool == "search":
      queries = _as_list(arguments["query"])[:MAX_QUERIES]
      blocks = []
      for q in queries:
        hits = self.search(q)
        if not hits:
          self.misses += 1
          blocks.append(f"[offline] no document of the local corpus matches {q!r}")
          continue
        lines = [
          f"{i}. {d.get('title', '')}\nURL: {d['url']}\nSnippet: {d['text'][:200]}"
          for i, d in enumerate(hits, 1)
        ]
        blocks.append(f"Results for {q!r}:\n" + "\n\n".join(lines))
      return ToolOutput("\n=======\n".join(blocks), "ok" if len(blocks) > 0 else "offline_miss")
    if tool == "visit":
      parts, missed = [], 0
      for url in _as_list(arguments["url"])[:MAX_URLS]:
        doc = self.by_url.get(url)
        if doc is None:
          missed += 1
          parts.append(f"[offline] no recorded result for visit {url}")
        else:
          parts.append(f"URL: {url}\n{doc['text'][:VISIT_MAX_CHARS]}")
      self.misses += missed
      status = "offline_miss" if missed == len(parts) else "ok"
      return ToolOutput("\n\n".join(parts), status)
    return ToolOutput(f"[offline] the corpus backend does not serve {tool!r}", "offline_miss")


class LiveBackend:
  """Serper search / Jina-reader visit; refuses clearly without keys or network opt-in."""

  def __call__(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
    if tool == "search":
      key = os.environ.get("SERPER_KEY_ID")
      if not key:
        return ToolOutput("search refused: the live backend needs SERPER_KEY_ID", "refused")
      blocks = [self._serper(q, key) for q in _as_list(arguments["query"])[:MAX_QUERIES]]
      return ToolOutput("\n=======\n".join(blocks))
    if tool == "visit":
      if os.environ.get("PS_JAX_ALLOW_NETWORK") != "1":
        return ToolOutput("visit refused: set PS_JAX_ALLOW_NETWORK=1 for live pages", "refused")
      parts = []
      for url in _as_list(arguments["url"])[:MAX_URLS]:
        req = urllib.request.Request(f"https://r.jina.ai/{url}")
        with urllib.request.urlopen(req, timeout=35) as r:  # noqa: S310 (user opted in)
          parts.append(f"URL: {url}\n" + r.read().decode("utf-8", "replace")[:VISIT_MAX_CHARS])
      return ToolOutput("\n\n".join(parts))
    return ToolOutput(f"the live backend does not serve {tool!r}", "refused")

  @staticmethod
  def _serper(query: str, key: str) -> str:
    req = urllib.request.Request(
      "https://google.serper.dev/search",
      data=json.dumps({"q": query}).encode(),
      headers={"X-API-KEY": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (user gave a key)
      organic = json.load(r).get("organic", [])[:SEARCH_TOP_K]
    return "\n\n".join(
      f"{i}. {o.get('title', '')}\nURL: {o.get('link', '')}\nSnippet: {o.get('snippet', '')}"
      for i, o in enumerate(organic, 1)
    )


def _as_list(x) -> list[str]:
  return [str(v) for v in x] if isinstance(x, list) else [str(x)]


def search_tool(backend: Backend) -> Tool:
  return Tool(
    "search", SEARCH_DESCRIPTION, SEARCH_SCHEMA, lambda query: backend("search", {"query": query})
  )


def visit_tool(backend: Backend) -> Tool:
  def visit(url, goal: str | None = None):
    args = {"url": url} if goal is None else {"url": url, "goal": goal}
    out = backend("visit", args)
    # The release only echoes the goal (no LLM summary of the page).
    return ToolOutput(f"Goal: {goal}\n{out.text}", out.status) if goal else out

  return Tool("visit", VISIT_DESCRIPTION, VISIT_SCHEMA, visit)
