from ps_jax.model.config import ModelConfig, RopeScaling
from ps_jax.model.transformer import DEFAULT_PREFILL, PrefillConfig, Transformer

__all__ = ["DEFAULT_PREFILL", "ModelConfig", "PrefillConfig", "RopeScaling", "Transformer"]
