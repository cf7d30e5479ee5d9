"""Training data: rows, row sources, schema processors and the synthetic task suite.

Model-independent: nothing here imports jax or model code (tokenization and the grain
pipeline build on these rows).
"""

from ps_jax.data.processors import (
  chat_to_row,
  few_shot_rows,
  few_shot_to_row,
  multihop_qa_to_row,
  tool_trace_to_row,
)
from ps_jax.data.rows import (
  MalformedRow,
  Row,
  RowLimits,
  RowStats,
  iter_valid_rows,
  parse_row,
  validate,
)
from ps_jax.data.sources import (
  ConcatRows,
  JsonlSource,
  RowSource,
  SourceSpec,
  TfdsSource,
  decode_tfds_record,
  hf_source,
  load_hf_dataset,
  open_records,
  open_source,
  parse_source,
  tfds_source,
  write_jsonl,
)
from ps_jax.data.synthetic import FAMILIES, generate, score

__all__ = [
  "FAMILIES",
  "ConcatRows",
  "JsonlSource",
  "MalformedRow",
  "Row",
  "RowLimits",
  "RowSource",
  "RowStats",
  "SourceSpec",
  "TfdsSource",
  "chat_to_row",
  "decode_tfds_record",
  "few_shot_rows",
  "few_shot_to_row",
  "generate",
  "hf_source",
  "iter_valid_rows",
  "load_hf_dataset",
  "multihop_qa_to_row",
  "open_records",
  "open_source",
  "parse_row",
  "parse_source",
  "score",
  "tfds_source",
  "tool_trace_to_row",
  "validate",
  "write_jsonl",
]
