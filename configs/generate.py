r"""Generate an answer with a model (default: the embedded SmolLM2-135M-Instruct, fp32).

  python -m launch.generate --config configs/generate.py \
      --config.prompt="What is the capital of France?"

Optional config argument: the model source, e.g. `--config configs/generate.py:/path/model.gguf`
(an embedded name, a .gguf file or a transformers folder). Any field can be overridden with
`--config.<field>=<value>`, e.g. `--config.max_new_tokens=32 --config.temperature=0.6`.
"""

import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, model="smollm2-135m-instruct")
  c = ml_collections.ConfigDict()
  c.model = arg.model  # embedded name, .gguf file or local transformers folder
  c.dtype = "float32"  # parameter dtype: float32 | bfloat16
  c.prompt = "What is the capital of France?"
  c.chat = True  # wrap the prompt as one user turn of the tokenizer's chat template
  c.max_new_tokens = 128
  c.temperature = 0.0  # 0 = greedy
  c.top_p = 1.0
  c.top_k = 0  # 0 = off
  c.seed = 0
  # Run the generation once before the timed one, so that the reported tok/s exclude XLA
  # compilation (the warm-up's extra time is logged as compile time).
  c.warmup = True
  return c
