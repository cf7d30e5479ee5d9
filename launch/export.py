r"""Exports the adapter of a training run (newest good checkpoint) for `ps_jax.load_adapter`.

  python -m launch.export --workdir workdir/demo --format orbax --out exports/demo_orbax
  python -m launch.export --workdir workdir/demo --format peft --out exports/demo_peft

`orbax`: our own format (adapter.json + params/). `peft`: the reference release layout, a PEFT
LoRA folder `judger_lora/` (adapter_config.json + adapter_model.safetensors) plus
`cache_mapper.pt` and `cache_mapper_config.json`, and our adapter.json. Both read back with
`ps_jax.load_adapter(out)` (adapter.json records the model shape; `load_adapter(out,
model.config)` also checks it against the model). Both record the base model as the run's
model.source names it (an HF hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct for the embedded
smollm2-135m-instruct, or an absolute path; and its revision when known), the peft layout as
adapter_config.json's base_model_name_or_path and revision, so that
`peft.AutoPeftModelForCausalLM.from_pretrained(out + "/judger_lora")` finds it; a random_init
run records none. The adapter is rebuilt from
WORKDIR/config.json (written by launch.train); `--step N` picks a checkpoint instead of the
newest good one.
"""

from __future__ import annotations

import json

from absl import app, flags

from launch import _flags

flags.DEFINE_string(
  "workdir", None, "Training workdir (config.json + checkpoints/).", required=True
)
flags.DEFINE_enum("format", "orbax", ["orbax", "peft"], "Output format.")
flags.DEFINE_string("out", None, "Output folder.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest good one).")
flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --out.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _flags.initialize_distributed()  # first: before anything queries devices
  from ps_jax.train.export import export_adapter  # pylint: disable=import-outside-toplevel

  info = export_adapter(
    FLAGS.workdir, FLAGS.out, FLAGS.format, step=FLAGS.step, overwrite=FLAGS.overwrite
  )
  print(f"exported step {info['step']} of {FLAGS.workdir} as {FLAGS.format} to {FLAGS.out}")
  print(json.dumps(info, indent=1))


if __name__ == "__main__":
  app.run(main)
