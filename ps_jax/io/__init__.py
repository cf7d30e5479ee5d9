from ps_jax.io.load import load, load_config, load_tokenizer

__all__ = ["load", "load_config", "load_tokenizer"]
