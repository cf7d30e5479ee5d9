from ps_jax.model.config import ModelConfig, RopeScaling
from ps_jax.model.transformer import Transformer

__all__ = ["ModelConfig", "RopeScaling", "Transformer"]
