"""Distillation from text synthesis (DESIGN.md 2.8, role (c)): build training rows whose target is
what the *text-concatenation* synthesizer of the frozen base model answers.

For every input row (a query, optionally with contexts):
  1. branches: N workers sample the query with the frozen base model (temperature 0.6, top-p
     0.95 by default), or the row's own contexts are used as the branches;
  2. the teacher: `synthesize(..., method="text")` (greedy) reads the branch texts;
  3. the output row: {query, answer = the teacher's output, contexts = the branch texts,
     source = "distill/<input source>", meta}; `launch.train` reads it as one of its
     `--config.data.sources` ("jsonl:PATH").

Resumable and deterministic: each input record has a stable index (its position in the
input), the workers of row i sample with `fold_in(key(seed), i)` (never a running key), rows
are processed in index order and appended batch by batch with flush + fsync, and a restart
skips the indices already present in the output (or in the `.skipped.jsonl` sidecar, for rows
that produced no trainable example). A kill loses at most the batch in flight; a line cut by
the kill is truncated on restart. The run's settings are stored next to the output
(`.config.json`) and a restart with different settings is refused instead of mixing rows.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
from absl import logging
from tqdm.auto import tqdm

from ps_jax.cache.branches import Branches
from ps_jax.data import synthetic
from ps_jax.data.rows import ANSWER_KEYS, CONTEXT_KEYS, QUERY_KEYS, MalformedRow, Row, RowStats
from ps_jax.data.sources import missing_file, open_records, parse_source
from ps_jax.generation import SamplingConfig, encode_prompts
from ps_jax.model import Transformer
from ps_jax.prompts import PromptTemplates
from ps_jax.synthesis import synthesize
from ps_jax.workers import run_workers

BRANCH_MODES = ("auto", "workers", "contexts")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  # Where a row's branches come from: "workers" always samples N workers on the query;
  # "contexts" uses the row's contexts (rows without them are skipped); "auto" uses the
  # contexts when the row has them, workers otherwise.
  branches: str = "auto"
  num_branches: int = 3  # N workers per query
  worker_max_new_tokens: int = 256
  synth_max_new_tokens: int = 256
  temperature: float = 0.6  # worker sampling (DESIGN.md 2.9); the teacher is greedy
  top_p: float = 0.95
  seed: int = 0  # row i's workers sample with fold_in(key(seed), i)
  batch_size: int = 4  # rows per teacher batch and per write (a kill loses at most one)
  max_rows: int = 0  # only the first max_rows input records (0 = all)

  def __post_init__(self):
    if self.branches not in BRANCH_MODES:
      raise ValueError(f"branches={self.branches!r}; expected one of {BRANCH_MODES}")
    for name in ("num_branches", "worker_max_new_tokens", "synth_max_new_tokens", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.max_rows < 0:
      raise ValueError(f"max_rows={self.max_rows} must be >= 0 (0 = all rows)")
    SamplingConfig(self.temperature, self.top_p)  # checked before any model loads

  def identity(self) -> dict[str, Any]:
    """The settings that change the output rows (batch_size and max_rows do not)."""
    out = dataclasses.asdict(self)
    for key in ("batch_size", "max_rows"):
      out.pop(key)
    return out


@dataclasses.dataclass(frozen=True)
class DistillInput:
  """One input record: a query and, optionally, contexts to use as its branches."""

  index: int  # stable id: position of the record in its input (the resume key)
  query: str
  contexts: tuple[str, ...] = ()  # () = none given
  reference: str | None = None  # the input's own answer, if any (kept in meta)
  source: str = ""
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DistillStats:
  written: int = 0  # rows written by this run
  already_done: int = 0  # rows (written or skipped) found from an earlier run
  skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
  seconds: float = 0.0

  def __str__(self) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
    return (
      f"{self.written} rows written, {self.already_done} already done, "
      f"{sum(self.skipped.values())} skipped ({reasons or 'none'}) in {self.seconds:.1f} s"
    )


# ---------------------------------------------------------------------------- inputs


def _first(obj: Mapping[str, Any], keys: Sequence[str]) -> Any:
  for key in keys:
    if obj.get(key) is not None:
      return obj[key]
  return None


def input_from_record(obj: Any, index: int, source: str = "") -> DistillInput:
  """A DistillInput from a JSON object in our or the reference's field names.

  Needs a query (`query`/`question`); contexts (`contexts`/`agent_reference_contexts`) and
  an answer (`answer`/`gold`, kept as meta.distill.reference_answer) are optional.
  """
  if not isinstance(obj, Mapping):
    raise MalformedRow("row", "wrong_type", f"expected a JSON object, got {type(obj).__name__}")
  query = _first(obj, QUERY_KEYS)
  if query is None:
    raise MalformedRow("query", "missing", f"none of {list(QUERY_KEYS)} is present")
  if not isinstance(query, str):
    raise MalformedRow("query", "wrong_type", f"expected a string, got {type(query).__name__}")
  if not query.strip():
    raise MalformedRow("query", "empty", "is blank")
  contexts = _first(obj, CONTEXT_KEYS)
  if contexts is None:
    contexts = ()
  elif isinstance(contexts, (str, bytes)) or not isinstance(contexts, Sequence):
    raise MalformedRow(
      "contexts", "wrong_type", f"expected a list of strings, got {type(contexts).__name__}"
    )
  for i, ctx in enumerate(contexts):
    if not isinstance(ctx, str):
      raise MalformedRow(
        "contexts", "wrong_type", f"contexts[{i}] is {type(ctx).__name__}, not a string"
      )
    if not ctx.strip():
      raise MalformedRow("contexts", "empty_item", f"contexts[{i}] is blank")
  answer = _first(obj, ANSWER_KEYS)
  meta = dict(obj.get("meta") or {})
  if "id" in obj and "id" not in meta:
    meta["id"] = obj["id"]
  return DistillInput(
    index=index,
    query=query,
    contexts=tuple(contexts),
    reference=answer if isinstance(answer, str) else None,
    source=str(obj.get("source") or obj.get("dataset") or source),
    meta=meta,
  )


def _json_lines(path: str) -> Iterator[Any]:
  """The objects of a JSONL file's non-blank lines; a MalformedRow for a line that is not JSON."""
  with open(path, "rb") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        yield json.loads(line)
      except ValueError as e:
        yield MalformedRow("line", "invalid_json", str(e))


def _collect_inputs(
  records: Iterable[Any], *, source: str, label: str
) -> tuple[list[DistillInput], RowStats]:
  """Inputs of raw records; a record's index is its position. Malformed records are skipped
  and counted (their indices stay reserved, so the indices of the others do not move)."""
  stats, inputs = RowStats(), []
  for index, obj in enumerate(records):
    try:
      if isinstance(obj, MalformedRow):
        raise obj
      inputs.append(input_from_record(obj, index, source=source))
      stats.valid += 1
    except MalformedRow as e:
      logging.warning("%s record %d skipped: %s", label, index, e)
      stats.skip(e.reason)
  return inputs, stats


def read_jsonl_inputs(path: str) -> tuple[list[DistillInput], RowStats]:
  """The records of a JSONL file; a record's index is its number among the non-blank lines."""
  name = os.path.splitext(os.path.basename(path))[0]
  return _collect_inputs(_json_lines(path), source=name, label=path)


def synthetic_inputs(
  families: Sequence[str],
  *,
  split: str = "train",
  per_family: int = 100,
  seed: int = 0,
  num_branches: int | tuple[int, int] = 3,
  difficulty: int = 1,
) -> list[DistillInput]:
  """Rows of the synthetic suite (with their contexts and gold answers), indexed in order."""
  inputs = []
  for family in families:
    fam = synthetic.FAMILIES.get(family)
    if fam is None:
      raise ValueError(f"unknown synthetic family {family!r}; known: {sorted(synthetic.FAMILIES)}")
    if isinstance(num_branches, int):
      nb = max(num_branches, fam.min_branches)
    else:  # as launch.train: the low end is raised to the family's minimum
      lo, hi = num_branches
      nb = (max(lo, fam.min_branches), max(hi, fam.min_branches))
    for row in synthetic.generate(family, split, per_family, seed, nb, difficulty):
      inputs.append(
        DistillInput(
          index=len(inputs),
          query=row.query,
          contexts=row.contexts,
          reference=row.answer,
          source=row.source,
          meta=dict(row.meta),
        )
      )
  return inputs


def load_inputs(
  spec: str, *, tfds_data_dir: str | None = None, **synthetic_kwargs
) -> tuple[list[DistillInput], RowStats]:
  """The input records of a source string (ps_jax.data.sources): `synthetic` /
  `synthetic:family1,family2` (see `synthetic_inputs`), `jsonl:PATH` (or a bare path),
  `tfds:NAME[:SPLIT]` or `hf:NAME[:SPLIT]` (and the other hf: forms; split "train" unless
  given). Records need a query; contexts and an answer are optional (`input_from_record`)."""
  parsed = parse_source(spec, field="input")
  if parsed.kind == "synthetic":
    families = list(parsed.families) or list(synthetic.FAMILIES)
    inputs = synthetic_inputs(families, **synthetic_kwargs)
    return inputs, RowStats(valid=len(inputs))
  if parsed.kind == "jsonl":
    if not os.path.isfile(parsed.name):
      raise missing_file(parsed, "input")
    return read_jsonl_inputs(parsed.name)
  records = open_records(parsed, split="train", field="input", tfds_data_dir=tfds_data_dir)
  if parsed.data_files:  # hf:json:FILES: the first file's name, as for a JSONL input
    name = os.path.splitext(os.path.basename(parsed.data_files.split(",")[0]))[0]
  else:
    name = parsed.name
  return _collect_inputs(records, source=name, label=spec)


# ---------------------------------------------------------------------------- output files


def sidecar_paths(output: str) -> tuple[str, str]:
  """(settings file, skipped-rows file) next to `output`."""
  base = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
  return base + ".config.json", base + ".skipped.jsonl"


def _index_of(obj: Any) -> int:
  return int(obj["meta"]["distill"]["index"]) if "meta" in obj else int(obj["index"])


def _done_indices(path: str) -> set[int]:
  """Indices recorded in a JSONL file written by `distill`; a final line cut by a kill (no
  trailing newline) is truncated away, so the row is redone."""
  if not os.path.exists(path):
    return set()
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      cut = data.rfind(b"\n") + 1
      logging.warning(
        "%s: dropping an incomplete last line (%d bytes) left by an interrupted "
        "run; that row is redone",
        path,
        len(data) - cut,
      )
      f.truncate(cut)
      data = data[:cut]
  done: set[int] = set()
  for lineno, line in enumerate(data.splitlines(), 1):
    if not line.strip():
      continue
    try:
      index = _index_of(json.loads(line))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
        f"{path}:{lineno}: not a line written by distillation ({e!r}); "
        "fix or remove the file, or set overwrite"
      ) from None
    if index in done:
      raise ValueError(f"{path}:{lineno}: row index {index} occurs twice")
    done.add(index)
  return done


def _check_settings(path: str, settings: dict, resuming: bool) -> None:
  if resuming and os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != settings:
      changed = {
        k: (old.get(k), settings.get(k))
        for k in sorted(set(old) | set(settings))
        if old.get(k) != settings.get(k)
      }
      raise ValueError(
        f"the output next to {path} was written with other settings "
        f"(field: (old, new)) {changed}; use another output path or set "
        "overwrite to start over"
      )
  with open(path, "w") as f:
    json.dump(settings, f, indent=1, sort_keys=True)


# ---------------------------------------------------------------------------- distillation


def row_rng(seed: int, index: int) -> jax.Array:
  """The workers' sampling key of input row `index`: independent of batching and restarts."""
  return jax.random.fold_in(jax.random.key(seed), index)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
  for start in range(0, len(items), size):
    yield items[start : start + size]


def _branch_texts(
  model, tokenizer, x: DistillInput, cfg: DistillConfig, templates: PromptTemplates
) -> tuple[str, list[str]]:
  """(where the branches came from, the branch texts) of one input row."""
  if cfg.branches == "contexts" or (cfg.branches == "auto" and x.contexts):
    if not x.contexts:
      raise MalformedRow("contexts", "missing", "branches='contexts' but the row has none")
    return "contexts", list(x.contexts)
  branches = run_workers(
    model,
    tokenizer,
    [x.query],
    num_branches=cfg.num_branches,
    max_new_tokens=cfg.worker_max_new_tokens,
    rng=row_rng(cfg.seed, x.index),
    temperature=cfg.temperature,
    top_p=cfg.top_p,
    templates=templates,
  )
  return "workers", list(branches.texts[0])


def distill_batch(
  model: Transformer,
  tokenizer,
  batch: Sequence[DistillInput],
  cfg: DistillConfig,
  templates: PromptTemplates = PromptTemplates(),
) -> tuple[list[Row], list[dict]]:
  """(rows, skipped records {index, reason, detail}) of one batch of input rows."""
  live, skipped = [], []
  limit = model.config.max_position_embeddings
  for x in batch:
    try:
      mode, texts = _branch_texts(model, tokenizer, x, cfg, templates)
      kept = [t for t in texts if t.strip()]  # a blank branch has no tokens to attend to
      if not kept:
        raise MalformedRow("contexts", "empty", "every worker output is blank")
      prompt = encode_prompts(tokenizer, [templates.text_synthesizer_messages(x.query, kept)])
      if len(prompt[0]) + cfg.synth_max_new_tokens > limit:
        raise MalformedRow(
          "contexts",
          "too_long",
          f"the text synthesizer prompt has {len(prompt[0])} tokens; + "
          f"synth_max_new_tokens={cfg.synth_max_new_tokens} exceeds the "
          f"model's max_position_embeddings={limit}",
        )
    except MalformedRow as e:
      skipped.append({"index": x.index, "reason": e.reason, "detail": str(e)})
      continue
    live.append((x, mode, kept, len(texts) - len(kept)))
  rows = []
  if live:
    # Pad the teacher batch to batch_size (repeating the first row; outputs dropped) so the
    # batch dimension, and so the compiled programs, stay the same across batches.
    padded = list(live) + [live[0]] * (cfg.batch_size - len(live))
    texts = [kept for _, _, kept, _ in padded]
    branches = Branches(
      token_ids=[[[] for _ in t] for t in texts], texts=texts, caches=None
    )  # the text method reads only the texts
    result = synthesize(
      model,
      tokenizer,
      branches,
      [x.query for x, *_ in padded],
      method="text",
      max_new_tokens=cfg.synth_max_new_tokens,
      templates=templates,
    )
    # The padding rows' outputs are dropped.
    for (x, mode, kept, dropped), answer in zip(live, result.texts[: len(live)], strict=True):
      answer = answer.strip()
      if not answer:
        skipped.append(
          {
            "index": x.index,
            "reason": "answer:empty",
            "detail": "the text synthesizer's output is blank",
          }
        )
        continue
      info = {"index": x.index, "branches": mode}
      if dropped:
        info["dropped_blank_branches"] = dropped
      if x.reference is not None:
        info["reference_answer"] = x.reference
      source = f"distill/{x.source}" if x.source else "distill"
      rows.append(
        Row(
          query=x.query,
          answer=answer,
          contexts=tuple(kept),
          source=source,
          meta={**x.meta, "distill": info},
        )
      )
  return rows, skipped


def distill(
  model: Transformer,
  tokenizer,
  inputs: Sequence[DistillInput],
  cfg: DistillConfig,
  output: str,
  *,
  settings: Mapping[str, Any] | None = None,
  overwrite: bool = False,
  templates: PromptTemplates = PromptTemplates(),
  progress: bool = True,
) -> DistillStats:
  """Writes the distilled rows of `inputs` to `output` (JSONL), resuming a previous run.

  `settings` (JSON-able: input name, model, ...) is stored next to the output together with
  `cfg.identity()`; resuming with different settings raises ValueError.
  """
  start = time.perf_counter()
  output = os.path.abspath(output)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  settings_path, skipped_path = sidecar_paths(output)
  if overwrite:
    for path in (output, settings_path, skipped_path):
      if os.path.exists(path):
        os.remove(path)
  indices = [x.index for x in inputs]
  if len(set(indices)) != len(indices):
    raise ValueError("input indices are not unique")
  done = _done_indices(output)
  done_skipped = _done_indices(skipped_path)
  resuming = bool(done or done_skipped)
  _check_settings(settings_path, {"distill": cfg.identity(), **(settings or {})}, resuming)

  if cfg.max_rows:
    inputs = [x for x in inputs if x.index < cfg.max_rows]
  stats = DistillStats()
  pending = []
  for x in sorted(inputs, key=lambda x: x.index):
    if x.index in done or x.index in done_skipped:
      stats.already_done += 1
    else:
      pending.append(x)
  if stats.already_done:
    logging.info(
      "%s: resuming; %d of %d rows already done", output, stats.already_done, len(inputs)
    )
  bar = tqdm(total=len(pending), desc="distill", unit="row", disable=not progress)
  with (
    open(output, "a", encoding="utf-8") as out,
    open(skipped_path, "a", encoding="utf-8") as skipped_file,
  ):
    for batch in _batches(pending, cfg.batch_size):
      rows, skipped = distill_batch(model, tokenizer, batch, cfg, templates)
      for row in rows:
        out.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
      for record in skipped:
        skipped_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        stats.skipped[record["reason"]] += 1
      for f in (out, skipped_file):
        f.flush()
        os.fsync(f.fileno())
      stats.written += len(rows)
      bar.update(len(batch))
      bar.set_postfix(written=stats.written, skipped=sum(stats.skipped.values()))
  bar.close()
  stats.seconds = time.perf_counter() - start
  return stats


def pipeline_needs(
  path: str, tokenizer, templates: PromptTemplates = PromptTemplates()
) -> dict[str, int]:
  """The smallest training-pipeline sizes (ps_jax.data.pipeline.PipelineConfig fields) that
  keep every row of a distilled JSONL file: longer rows would be skipped as too long."""
  from ps_jax.data.sources import JsonlSource  # pylint: disable=import-outside-toplevel

  need = {"max_branches": 0, "branch_tokens": 0, "target_tokens": 0, "synth_tokens": 0}
  for row in JsonlSource(path):
    prompt = encode_prompts(tokenizer, [templates.latent_synthesizer_messages(row.query)])[0]
    target = len(tokenizer.encode(row.answer.strip(), add_special_tokens=False)) + 1  # + EOS
    need["max_branches"] = max(need["max_branches"], len(row.contexts))
    need["branch_tokens"] = max(
      need["branch_tokens"],
      *(len(tokenizer.encode(c, add_special_tokens=False)) for c in row.contexts),
    )
    need["target_tokens"] = max(need["target_tokens"], target)
    need["synth_tokens"] = max(need["synth_tokens"], len(prompt) + target)
  return need
