"""ps_jax: Parallel-Synthesis in JAX. The public API (DESIGN.md section 4)."""

from ps_jax.adapter import Adapter, load_adapter, save_adapter
from ps_jax.cache import KVCache
from ps_jax.cache.branches import BranchCaches, Branches
from ps_jax.generation import generate
from ps_jax.io import load
from ps_jax.model import ModelConfig, Transformer
from ps_jax.synthesis import METHODS, SynthesisResult, synthesis_logits, synthesize
from ps_jax.workers import encode_branches, run_workers

__all__ = [
  "Adapter",
  "BranchCaches",
  "Branches",
  "KVCache",
  "METHODS",
  "ModelConfig",
  "SynthesisResult",
  "Transformer",
  "encode_branches",
  "generate",
  "load",
  "load_adapter",
  "run_workers",
  "save_adapter",
  "synthesis_logits",
  "synthesize",
]
