"""Notebooks in colabs/: committed with stripped outputs, and every one runs top to bottom.

The execution test starts a `python3` kernel from this interpreter's environment, in the
repository root, with the repository root on PYTHONPATH (ps_jax need not be pip-installed).
"""

from __future__ import annotations

import glob
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
CELL_TIMEOUT_S = 300
_FAKE_DEVICES = "--xla_force_host_platform_device_count"


def _ids(paths):
  return [os.path.basename(p) for p in paths]


def test_there_are_notebooks():
  assert NOTEBOOKS, "no notebooks in colabs/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_outputs_are_stripped(path):
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.get("outputs") == [], f"{os.path.basename(path)} cell {i} has outputs"
      assert cell.get("execution_count") is None, (
        f"{os.path.basename(path)} cell {i} has an execution count"
      )
    assert "attachments" not in cell or not cell["attachments"]
  assert "widgets" not in nb.metadata


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  # The kernel inherits this environment: make ps_jax importable from the checkout, drop the
  # test-only fake CPU devices, and run on CPU as a user would here.
  paths = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FAKE_DEVICES)]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  # The python3 kernel of this interpreter (ipykernel's own spec), not whatever is installed
  # system-wide under that name.
  monkeypatch.setenv("JUPYTER_PATH", os.path.join(sys.prefix, "share", "jupyter"))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": ROOT}}
  )
  start = time.perf_counter()
  client.execute()
  print(f"{os.path.basename(path)} executed in {time.perf_counter() - start:.1f} s")
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors, errors
