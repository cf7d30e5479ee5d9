"""The cluster launch scripts (launch/tpu, launch/slurm, launch/gke) are valid bash, start
training with --distributed=auto, name existing XLA flag files, and the [tpu]/[gpu] extras pin
the installed jax. Nothing here reaches a cluster: gcloud, srun and xpk are not run."""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import subprocess
import tomllib

import pytest

from configs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(
  os.path.relpath(p, REPO)
  for folder in ("tpu", "slurm", "gke")
  for p in glob.glob(os.path.join(REPO, "launch", folder, "*"))
  if p.endswith((".sh", ".sbatch"))
)


def _bash_syntax(path: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", "-n", path], capture_output=True, text=True, cwd=REPO)


def _code(path: str) -> str:
  """The script without comment lines (what runs)."""
  with open(os.path.join(REPO, path)) as f:
    return "\n".join(line for line in f if not line.lstrip().startswith("#"))


def test_every_target_has_scripts():
  folders = {p.split(os.sep)[1] for p in SCRIPTS}
  assert folders == {"tpu", "slurm", "gke"}, SCRIPTS
  assert "launch/slurm/train.sbatch" in SCRIPTS
  assert {"launch/tpu/run.sh", "launch/tpu/slice.sh", "launch/tpu/multislice.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS)
def test_script_parses_and_launches_with_auto_distributed(path):
  result = _bash_syntax(path)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  assert text.startswith("#!/usr/bin/env bash\n# "), (
    f"{path}: no header comment saying how to use it"
  )
  assert "--distributed=auto" in text, path
  code = _code(path)
  # Every command that starts training (the code, not the comments) passes --distributed=auto.
  for m in re.finditer(r"launch\.train", code):
    command = code[m.start() : m.start() + 200]
    assert "--distributed=auto" in command, f"{path}: {command!r}"
  for target in re.findall(r"configs\.xla_flags\s+\"?\$?\{?(?:XLA_FLAGS_TARGET:-)?(\w+)", code):
    assert target in xla_flags.targets(), f"{path} names a missing flag file {target!r}"
  if path != "launch/tpu/run.sh":
    assert "launch.train" in code or "launch/tpu/run.sh" in code, path


def test_bash_check_can_fail(tmp_path):
  broken = tmp_path / "broken.sh"
  broken.write_text("#!/usr/bin/env bash\nif true; then\n  echo x\n")  # no fi
  assert _bash_syntax(str(broken)).returncode != 0


def test_accelerator_extras_pin_the_installed_jax():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  version = importlib.metadata.version("jax")
  assert extras["tpu"] == [f"jax[tpu]=={version}"]
  assert extras["gpu"] == [f"jax[cuda12]=={version}"]
  # The installed jax offers those extras (libtpu; the CUDA 12 plugin).
  provided = importlib.metadata.metadata("jax").get_all("Provides-Extra")
  assert {"tpu", "cuda12"} <= set(provided), provided
