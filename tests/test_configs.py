"""Every experiment config names its launch command, and that command's config loads."""

from __future__ import annotations

import glob
import importlib
import os
import re

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  os.path.relpath(p, REPO)
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if "def get_config" in open(p).read()
)
_LAUNCH = re.compile(r"python -m (launch\.\w+) --config (configs/\w+\.py)(?::(\S+))?")


@pytest.mark.parametrize("path", CONFIGS)
def test_docstring_launch_command_loads(path):
  module = importlib.import_module(path[:-3].replace("/", "."))
  commands = [m for m in _LAUNCH.finditer(module.__doc__ or "") if m.group(2) == path]
  assert commands, f"{path}: its docstring names no `python -m launch.<name> --config {path}`"
  for launcher, _, arg in (m.groups() for m in commands):
    assert os.path.exists(os.path.join(REPO, *launcher.split("."))) or os.path.exists(
      os.path.join(REPO, *launcher.split(".")) + ".py"
    ), launcher
    assert isinstance(module.get_config(arg), ml_collections.ConfigDict)


def test_eval_config_covers_its_datasets():
  from configs import eval as eval_config  # pylint: disable=import-outside-toplevel
  from ps_jax.evals import DATASETS  # pylint: disable=import-outside-toplevel

  assert set(eval_config.DATASETS) <= set(DATASETS)
  for name in eval_config.DATASETS:
    assert eval_config.get_config(name).dataset == name
  assert eval_config.get_config("humaneval").synth_max_new_tokens == 384
  with pytest.raises(ValueError, match="DATASET one of"):
    eval_config.get_config("nope")
