"""Axis-letter legend and array aliases used in shape comments throughout ps_jax.

L  decoder layers            B  batch
R  branches per example      S  slots (cache positions) per branch or cache
T  tokens in the current chunk
K  key/value heads           G  query heads per kv head (N = K * G)
N  query heads               H  head dim
D  model (embed) dim         F  MLP hidden dim
V  vocabulary                P  read-only prefix slots (merged branch caches)
r  LoRA rank
"""

from typing import Any

import jax

Array = jax.Array
PyTree = Any
