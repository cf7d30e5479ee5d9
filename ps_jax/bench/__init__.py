"""Benchmarks: throughput of the forward pass (`forward`) and shared reporting (`report`)."""
