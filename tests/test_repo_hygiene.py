"""The repository names no path of the machine it was written on; orbax is called from one
module only."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_text_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.fail("the repository's files are listed with git; run the tests from a git checkout")
  this = os.path.relpath(__file__, REPO)  # it spells the workspace's paths out
  return [
    f
    for f in out.stdout.decode().split("\0")
    if f and f != this and not f.endswith((".png", ".gguf"))
  ]


def test_no_absolute_machine_paths():
  home = os.path.expanduser("~").rstrip("/")
  # The checkout itself, the user's home, the workspace this project was written in.
  needles = {REPO + "/", "/work/main", "/work/shared", "/root/.pyenv"}
  if home not in ("", "/"):
    needles.add(home + "/")
  hits = []
  for name in _tracked_text_files():
    try:
      with open(os.path.join(REPO, name), encoding="utf-8") as f:
        text = f.read()
    except (UnicodeDecodeError, FileNotFoundError):
      continue
    hits += [f"{name}: {n}" for n in sorted(needles) if n in text]
  assert not hits, "absolute paths of a machine in the repository:\n" + "\n".join(hits)


def test_orbax_is_called_from_the_checkpoint_module_only():
  # orbax's API is still moving: one module to follow it (ps_jax/train/checkpoint.py).
  imports = re.compile(r"^\s*(import orbax|from orbax)", re.MULTILINE)
  owner = os.path.join("ps_jax", "train", "checkpoint.py")
  hits = [
    name
    for name in _tracked_text_files()
    if name.endswith(".py")
    and name.startswith(("ps_jax/", "launch/", "configs/"))
    and name != owner
    and imports.search(open(os.path.join(REPO, name), encoding="utf-8").read())
  ]
  assert not hits, f"orbax imported outside {owner}: {hits}"
