from ps_jax.io.load import load

__all__ = ["load"]
