"""Test-wide setup: 8 fake CPU devices, CPU-only jax, shared fixtures.

The environment is set at import time, before anything imports jax: pytest imports this
conftest before collecting any test module. XLA_FLAGS is appended to, not replaced.

fp32 matmul precision: on the CPU backend `jax_default_matmul_precision` makes no difference
(fp32 dots are computed in fp32 either way: the tiny-model parity diffs are bit-identical with
and without "highest"), so it is left at its default here; parity tests run in fp32.
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
# `import helpers` from any test folder; `import ps_jax` without an installed package.
for _p in (_TESTS, _ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

if "jax" in sys.modules:  # pragma: no cover - only when a plugin imported jax first
  import warnings

  warnings.warn(
    "jax was imported before tests/conftest.py set XLA_FLAGS; the fake 8-device "
    "CPU mesh may be unavailable",
    stacklevel=1,
  )

import jax  # noqa: E402  pylint: disable=wrong-import-position
import pytest  # noqa: E402  pylint: disable=wrong-import-position

import helpers  # noqa: E402  pylint: disable=wrong-import-position

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """`tiny(family)` -> (helpers.TinyHF, ps_jax model): built, saved and loaded once per session.

  Shared between tests: do not mutate the returned models or their folders (build your own
  with `helpers.tiny_hf_model` to corrupt files).
  """
  built = {}

  def get(family: str):
    if family not in built:
      t = helpers.tiny_hf_model(family, tmp_path_factory.mktemp(family))
      built[family] = (t, helpers.load_tiny(t))
    return built[family]

  return get


@pytest.fixture(scope="session")
def smollm2():
  """(ps_jax model, tokenizer) for the real SmolLM2-135M-Instruct GGUF (fp32), once a session."""
  import ps_jax  # pylint: disable=import-outside-toplevel

  return ps_jax.load(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_hf():
  """transformers' own fp32 load of the same GGUF file (the parity reference), once a session."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  from ps_jax.io.registry import embedded_path  # pylint: disable=import-outside-toplevel

  path = embedded_path(SMOLLM2)
  hf = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  )
  return hf.eval()


def pytest_collection_modifyitems(items):
  """Files with a slow test first (in collection order), so that the workers of `-n 2 --dist
  loadfile` start on the long files and end on short ones instead of waiting on one long tail."""
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)  # stable: the order within each file stays


def pytest_report_header(config):  # pylint: disable=unused-argument
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
