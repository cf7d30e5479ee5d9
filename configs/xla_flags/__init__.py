r"""XLA compiler flag files per accelerator target (h100.txt, tpu_v5e.txt, tpu_v5p.txt).

Format: one `--flag=value` per line, each with a `#` comment on the line(s) above (or after it
on the same line) saying why; the first line `# env: XLA_FLAGS` or `# env: LIBTPU_INIT_ARGS`
names the variable the flags go in (GPU flags: XLA_FLAGS; TPU flags belong to libtpu:
LIBTPU_INIT_ARGS). The launch scripts export them with

  eval "$(python -m configs.xla_flags h100)"      # export XLA_FLAGS='--xla_gpu_...'

Unknown flags are fatal at start-up (`Unknown flag in XLA_FLAGS`), so tests/test_xla_flags.py
parses the XLA_FLAGS files with the installed jaxlib. libtpu's flags are not registered in the
CPU/GPU jaxlib and cannot be parsed without a TPU; their names must be in KNOWN_LIBTPU_FLAGS.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys

DIR = os.path.dirname(os.path.abspath(__file__))
ENVS = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")

# libtpu flag names used by MaxText (benchmarks/xla_flags_library.py, AI-Hypercomputer/maxtext)
# that these files may use. A name outside this list (e.g. a typo) fails the load.
KNOWN_LIBTPU_FLAGS = frozenset(
  {
    "xla_tpu_enable_async_collective_fusion",
    "xla_tpu_enable_async_collective_fusion_fuse_all_gather",
    "xla_tpu_enable_async_collective_fusion_fuse_all_reduce",
    "xla_tpu_enable_async_collective_fusion_multiple_steps",
    "xla_tpu_overlap_compute_collective_tc",
    "xla_enable_async_all_gather",
    "xla_enable_async_all_reduce",
    "xla_tpu_enable_data_parallel_all_reduce_opt",
    "xla_tpu_data_parallel_opt_different_sized_ops",
    "xla_tpu_scoped_vmem_limit_kib",
    "xla_tpu_use_minor_sharding_for_major_trivial_input",
    "xla_tpu_relayout_group_size_threshold_for_reduce_scatter",
    "xla_tpu_assign_all_reduce_scatter_layout",
    "xla_tpu_enable_all_experimental_scheduler_features",
    "xla_tpu_enable_scheduler_memory_pressure_tracking",
    "xla_latency_hiding_scheduler_rerun",
  }
)

_FLAG = re.compile(r"^--([a-z0-9_]+)=(\S*)$")


@dataclasses.dataclass(frozen=True)
class FlagFile:
  path: str
  env: str  # "XLA_FLAGS" or "LIBTPU_INIT_ARGS"
  flags: tuple[str, ...]  # "--name=value", in file order

  @property
  def value(self) -> str:
    """The environment variable's value: the flags separated by spaces."""
    return " ".join(self.flags)

  def names(self) -> tuple[str, ...]:
    return tuple(_FLAG.match(f).group(1) for f in self.flags)


def path_of(name: str) -> str:
  """The file of a target name ("h100", "tpu_v5p") or a path as given."""
  if os.sep in name or name.endswith(".txt"):
    return name
  return os.path.join(DIR, f"{name}.txt")


def targets() -> tuple[str, ...]:
  return tuple(sorted(f[:-4] for f in os.listdir(DIR) if f.endswith(".txt")))


def parse(text: str, path: str = "<text>") -> FlagFile:
  """Parses a flag file; raises ValueError naming the line for a malformed or unexplained flag,
  a duplicate, a missing `# env:` header, or a libtpu flag outside KNOWN_LIBTPU_FLAGS."""
  lines = text.splitlines()
  header = re.match(r"^#\s*env:\s*(\S+)\s*$", lines[0]) if lines else None
  if header is None or header.group(1) not in ENVS:
    raise ValueError(f"{path}:1: the first line must be `# env: X` with X one of {ENVS}")
  env = header.group(1)
  flags, seen, previous = [], set(), ""
  for number, raw in enumerate(lines[1:], start=2):
    line = raw.strip()
    if not line:
      previous = ""
      continue
    if line.startswith("#"):
      previous = line
      continue
    flag, _, comment = line.partition(" #")
    flag = flag.strip()
    m = _FLAG.match(flag)
    if m is None:
      raise ValueError(f"{path}:{number}: {line!r} is not one `--name=value` flag")
    if not comment.strip() and not previous.startswith("#"):
      raise ValueError(f"{path}:{number}: {flag} has no comment saying why (line above or after)")
    name = m.group(1)
    if name in seen:
      raise ValueError(f"{path}:{number}: {flag} is set twice")
    if env == "LIBTPU_INIT_ARGS" and name not in KNOWN_LIBTPU_FLAGS:
      raise ValueError(
        f"{path}:{number}: --{name} is not a known libtpu flag (configs/xla_flags "
        "KNOWN_LIBTPU_FLAGS); check the spelling or add it there with its source"
      )
    seen.add(name)
    flags.append(flag)
    previous = ""  # the next flag needs its own comment
  if not flags:
    raise ValueError(f"{path}: no flags")
  return FlagFile(path=path, env=env, flags=tuple(flags))


def load(name: str) -> FlagFile:
  """The flag file of a target ("h100", "tpu_v5e", "tpu_v5p") or a path."""
  path = path_of(name)
  if not os.path.exists(path):
    raise ValueError(f"XLA flag file {name!r} not found; targets: {targets()}")
  with open(path) as f:
    return parse(f.read(), path)


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(f"usage: python -m configs.xla_flags TARGET   (one of {targets()})", file=sys.stderr)
    return 2
  ff = load(argv[1])
  print(f"export {ff.env}={shlex.quote(ff.value)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
