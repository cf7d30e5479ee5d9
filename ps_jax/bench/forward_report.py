"""The forward benchmark's documents: markdown and a bar chart from one result of
`forward.run` (plus, when present, its decode-step analysis)."""

from __future__ import annotations

from typing import Any

from ps_jax.bench import report
from ps_jax.bench.decode_analysis import analysis_markdown


def _load(env: dict[str, Any]) -> str:
  before = (env.get("load_average_1_5_15") or [None])[0]
  after = (env.get("load_average_after") or [None])[0]
  if before is None:
    return "unknown"
  text = f"{before:.1f} before the runs"
  if after is not None:
    text += f", {after:.1f} after"
  busy = max(before, after or 0) > 1.5 * env.get("cpu_cores", 1)
  return text + (" (other processes shared the cores)" if busy else "")


def _ratio(r: dict[str, Any] | None) -> str:
  if not r:
    return "-"
  return f"{r['median']:.2f} ({r['round_min']:.2f}-{r['round_max']:.2f})"


def markdown(result: dict[str, Any], notes: str = "") -> str:
  """The markdown document for a result of `run` (tables, method, then `notes`)."""
  c, env, res = result["config"], result["environment"], result["results"]
  jx, pt = res["ps_jax"], res.get("transformers")
  ratios = res.get("ratio_ps_jax_over_transformers", {})

  def row(label, kind, key, ratio_key):
    return [
      label,
      report.fmt_spread(jx[kind][key]["tokens_per_s"]),
      report.fmt_spread(pt[kind][key]["tokens_per_s"]) if pt else "-",
      _ratio(ratios.get(ratio_key)),
      f"{jx[kind][key]['repeats']} / {pt[kind][key]['repeats']}" if pt else "-",
    ]

  rows = [
    row(f"prefill, {int(t):,} tokens, batch {c['prefill_batch']}", "prefill", t, f"prefill_{t}")
    for t in jx["prefill"]
  ]
  rows += [row(f"decode, batch {b}", "decode", b, f"decode_b{b}") for b in jx["decode"]]
  step_rows = [
    [
      f"decode step, batch {b}",
      report.fmt(d["ms_per_step"], 2),
      report.fmt(pt["decode"][b]["ms_per_step"], 2) if pt else "-",
    ]
    for b, d in jx["decode"].items()
  ]

  def compile_row(label, d, program):
    ev = d["compile_events_s"]
    return [
      label,
      report.fmt(d["compile_s"], 2),
      report.fmt(ev.get(f"backend_compile_duration:{program}"), 2),
      report.fmt(d["first_call_overhead_s"], 2),
    ]

  compile_rows = [
    compile_row(f"prefill (`_prefill`), {int(t):,} tokens", d, "_prefill")
    for t, d in jx["prefill"].items()
  ]
  compile_rows += [
    compile_row(f"decode loop (`_decode`), batch {b}", d, "_decode")
    for b, d in jx["decode"].items()
  ]
  threads = env.get("threads", {})
  attention = (env.get("torch_attn_implementation") or "?") if pt else None
  lines = [
    f"# Forward throughput: {result['model']} ({result['dtype']})",
    "",
    f"Machine: {report.device_name(env)}; 1-minute load average {_load(env)}. "
    f"Run {env['time_utc']}, jax "
    f"{env['versions'].get('jax')}, torch {env['versions'].get('torch')}, transformers "
    f"{env['versions'].get('transformers')}. Threads: "
    f"{', '.join(f'{k}: {v}' for k, v in threads.items()) or 'defaults'}; "
    f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}.",
    "",
    f"Tokens/s, median (min-max) of up to {c['repeats']} runs after {c['warmup']} warm-up "
    f"run(s) (fewer, at least {c['min_repeats']}, where one run exceeds "
    f"{c['path_budget_s']} s / {c['repeats']}; `runs` column), the frameworks' runs "
    "alternating; higher is better. Ratio = ps_jax / transformers tok/s: of the medians, and "
    "in parentheses the lowest and highest ratio of one round's two runs (how much the ratio "
    "moves between repeats).",
    "",
    report.markdown_table(
      ["", "ps_jax (JAX/XLA)", "transformers (PyTorch, sdpa)", "ratio (per-round range)", "runs"],
      rows,
    ),
    "",
    report.markdown_table(["ms per step (median)", "ps_jax", "transformers"], step_rows),
    "",
    "JAX compilation, excluded above (seconds, as JAX's compile events report them: "
    "tracing + lowering + XLA compile of the program, and the XLA part alone; the first "
    "call's extra time over the median call is shown for reference, it includes the noise "
    "of one run):",
    "",
    report.markdown_table(
      ["program", "compile", "of which XLA", "first-call overhead"], compile_rows
    ),
    "",
  ]
  if res.get("greedy_agreement"):
    lines += [
      "Greedy tokens agree between the frameworks on "
      + ", ".join(f"{100 * v:.0f}% (batch {b})" for b, v in res["greedy_agreement"].items())
      + " of the decoded length (share before the first difference).",
      "",
    ]
  lengths = ", ".join(f"{int(t):,}" for t in jx["prefill"])
  lines += [
    "## Method",
    "",
    f"- Prefill: one forward over {lengths} prompt tokens at batch "
    f"{c['prefill_batch']} that fills a KV cache and picks the first token from the last "
    "position (ps_jax: the jitted prefill `generate_ids` runs, `generation._prefill`, at the "
    "prompt's exact length; transformers: `model(ids, use_cache=True, logits_to_keep=1)` + "
    "argmax).",
    f"- Decode: greedy, exactly {c['decode_new_tokens']} new tokens after a "
    f"{c['decode_prompt_tokens']}-token prompt, rows of equal length (no padding). EOS is "
    "disabled: ps_jax gets the stop id -1, which no token can equal (every row is checked to "
    "run the full length); transformers gets `min_new_tokens = max_new_tokens`. ps_jax times "
    "its jitted decode loop (one step per token); transformers times `generate` from its first "
    "step to its last with a logits processor that notes the time of each step (N - 1 "
    "steps, generate's per-step overhead included).",
    "- Prompts: the same token ids for both frameworks (windows of a fixed English text).",
    f"- {result['dtype']} weights in both, from the same file; transformers uses "
    f'`attn_implementation="{attention}"` under `torch.inference_mode()`.',
    "- Regenerate: `python -m launch.bench_forward --config configs/bench_forward.py` "
    "(writes forward.json, forward.md, forward.png).",
    "",
  ]
  if result.get("decode_step_analysis"):
    per_step = {
      name: {b: d["ms_per_step"] for b, d in r["decode"].items()}
      for name, r in (("ps_jax", jx), ("transformers", pt))
      if r
    }
    lines += [analysis_markdown(result["decode_step_analysis"], per_step), ""]
  if notes:
    lines += [notes.rstrip(), ""]
  return "\n".join(lines)


def chart(result: dict[str, Any]) -> report.BarChart:
  res, b = result["results"], result["config"]["prefill_batch"]
  jx = res["ps_jax"]
  groups = [f"prefill {int(t):,} b{b}" for t in jx["prefill"]]
  groups += [f"decode b{x}" for x in jx["decode"]]

  def values(r):
    return [d["tokens_per_s"]["median"] for k in ("prefill", "decode") for d in r[k].values()]

  series = {"ps_jax (JAX/XLA)": values(jx)}
  if "transformers" in res:
    series["transformers (sdpa)"] = values(res["transformers"])
  return report.BarChart(
    title=f"{result['model']} {result['dtype']}, {report.device_name(result['environment'])}",
    ylabel="tokens/s (median)",
    groups=groups,
    values=series,
  )


def write(result: dict[str, Any], stem: str, notes: str = "") -> dict[str, str]:
  """Writes stem.json, stem.md and stem.png for a result of `forward.run`."""
  return report.write_report(stem, result, markdown(result, notes), chart(result))
