"""ps_jax: Parallel-Synthesis in JAX. The public API (DESIGN.md section 4)."""

from ps_jax.generation import generate
from ps_jax.io import load
from ps_jax.model import ModelConfig, Transformer

__all__ = ["ModelConfig", "Transformer", "generate", "load"]
