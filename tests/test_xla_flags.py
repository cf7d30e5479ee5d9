"""The XLA flag files (configs/xla_flags) load, and the installed jaxlib accepts the XLA_FLAGS
ones.

What this proves: XLA aborts at start-up on an unknown XLA_FLAGS name or a malformed value
(`Unknown flag in XLA_FLAGS`), and the GPU debug options are registered in the CPU jaxlib too,
so starting jax on CPU with h100.txt's flags checks every GPU flag's name and value type for
this jaxlib version (a misspelled copy is shown to fail). What it cannot prove: that a flag
helps, or that the GPU compiler honours it; and nothing about the TPU files' flags beyond their
names: libtpu registers those (the CPU jaxlib rejects them, shown below), so a TPU file's names
are checked against KNOWN_LIBTPU_FLAGS (taken from MaxText), which catches typos but not a flag
a newer libtpu removed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from configs import xla_flags


def _start_jax(env_value: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=env_value, JAX_PLATFORMS="cpu")
  code = "import jax; jax.devices(); print('started')"
  return subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
  )


def test_targets_and_envs():
  assert set(xla_flags.targets()) >= {"h100", "tpu_v5e", "tpu_v5p"}
  assert xla_flags.load("h100").env == "XLA_FLAGS"
  assert xla_flags.load("tpu_v5e").env == xla_flags.load("tpu_v5p").env == "LIBTPU_INIT_ARGS"


@pytest.mark.parametrize("target", [t for t in xla_flags.targets() if t.startswith("tpu")])
def test_tpu_files_use_known_libtpu_flags(target):
  ff = xla_flags.load(target)  # parse() raises on a name outside KNOWN_LIBTPU_FLAGS
  assert set(ff.names()) <= xla_flags.KNOWN_LIBTPU_FLAGS
  typo = ff.flags[0].replace("collective", "colective", 1)
  text = open(ff.path).read().replace(ff.flags[0], typo, 1)
  with pytest.raises(ValueError, match="not a known libtpu flag"):
    xla_flags.parse(text, ff.path)


def test_gpu_flags_start_jax_and_a_typo_does_not():
  ff = xla_flags.load("h100")
  assert len(ff.flags) >= 10
  ok = _start_jax(ff.value)
  assert ok.returncode == 0 and "started" in ok.stdout, ok.stderr[-2000:]
  # The same check fails on a misspelled name, and on a libtpu flag put in XLA_FLAGS.
  typo = ff.value.replace("latency_hiding", "latncy_hiding", 1)
  assert typo != ff.value
  for value in (typo, "--xla_tpu_enable_async_collective_fusion=true"):
    bad = _start_jax(value)
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr, (value, bad.stderr[-2000:])


def test_parse_errors_name_the_line():
  good = "# env: XLA_FLAGS\n# why\n--xla_a=1\n"
  assert xla_flags.parse(good).flags == ("--xla_a=1",)
  assert xla_flags.parse("# env: XLA_FLAGS\n--xla_a=1  # why\n").flags == ("--xla_a=1",)
  with pytest.raises(ValueError, match="first line"):
    xla_flags.parse("--xla_a=1\n")
  with pytest.raises(ValueError, match=":3: --xla_b=2 has no comment"):
    xla_flags.parse("# env: XLA_FLAGS\n\n--xla_b=2\n")
  with pytest.raises(ValueError, match=":4: --xla_c=3 has no comment"):
    xla_flags.parse("# env: XLA_FLAGS\n# why b\n--xla_b=2\n--xla_c=3\n")
  with pytest.raises(ValueError, match="set twice"):
    xla_flags.parse(good + "# again\n--xla_a=2\n")
  with pytest.raises(ValueError, match="not one `--name=value` flag"):
    xla_flags.parse("# env: XLA_FLAGS\n# why\n--xla_a 1\n")
