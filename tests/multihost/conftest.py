"""The `multihost` marker: tests that start real JAX processes (`pytest -m multihost`)."""

from __future__ import annotations


def pytest_configure(config):
  config.addinivalue_line(
    "markers", "multihost: starts real JAX processes (2 x 2 CPU devices, gloo); runs in CI"
  )
