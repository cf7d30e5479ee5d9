"""Benchmarks and their shared parts.

timing         the timing protocol (warm-up, interleaved repeats, budgets, memory probes)
report         environment record, tables, JSON + markdown + PNG writing
forward        prefill / decode throughput vs transformers (+ forward_report, decode_analysis)
ttft           TTFT of text synthesis vs Parallel-Synthesis: config and the run
paths          its per-method drivers; inputs: its token ids and branch caches
torch_ps       the reference-style PS in transformers; torch_models: the transformers side
checks         prefill backend selection, torch PS parity, the compile check
ttft_report    its markdown and plot
"""
