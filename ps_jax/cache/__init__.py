from ps_jax.cache.kv_cache import KVCache, PrefixKV

__all__ = ["KVCache", "PrefixKV"]
