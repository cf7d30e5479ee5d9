"""The TTFT benchmark's documents: markdown (tables, targets, checks, method) and a plot (TTFT
vs total branch tokens per path, log-log, beside the ratios), from one result of `ttft.run`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ps_jax.bench import report
from ps_jax.bench.ttft import PATHS, TARGETS

LABELS = {
  "text": "text (ps_jax)",
  "text_floor": "text floor (ps_jax raw prefill)",
  "torch_text": "text (transformers)",
  "parallel_synthesis": "PS (ps_jax)",
  "ps_floor": "PS floor (prefill over merged cache)",
  "torch_ps": "PS (transformers, reference-style)",
}
COLORS = {
  "text": "tab:red",
  "text_floor": "tab:pink",
  "torch_text": "tab:orange",
  "parallel_synthesis": "tab:blue",
  "ps_floor": "tab:cyan",
  "torch_ps": "tab:purple",
}


def _sec(x: float) -> str:
  return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _x(r: float | None) -> str:
  return "-" if r is None else f"{r:,.1f}x" if r >= 10 else f"{r:,.2f}x"


def _mib(b: int | None) -> str:
  if b is None:
    return "-"
  return f"{b / 2**20:,.0f}" if abs(b) >= 10 * 2**20 else f"{b / 2**20:.1f}"


def _path_cell(p: Mapping[str, Any]) -> str:
  if p.get("status") != "ok":
    reason = p.get("reason") or "-"
    if p.get("status") == "error":
      return "error"
    return "over context" if reason.startswith("over context") else "not run"
  s = p["seconds"]
  text = f"{_sec(s['median'])} ({_sec(s['min'])}-{_sec(s['max'])})"
  return text + (f" n={p['repeats']}" if p.get("reduced_repeats") else "")


def _memory(p: Mapping[str, Any], key: str) -> int | None:
  if p.get("status") != "ok":
    return None
  if key == "working":
    return (p.get("memory") or {}).get("working_bytes")
  return (p.get("peak") or {}).get("peak_delta_bytes")


def markdown(result: Mapping[str, Any]) -> str:
  env, cfg, cells = result["environment"], result["config"], result["cells"]
  versions = env["versions"]
  load = env.get("load_average_1_5_15")
  prefill = result.get("prefill") or {}
  used = prefill.get("used") or {}
  lines = [
    "# Time to first token: text synthesis vs Parallel-Synthesis",
    "",
    f"Model: {result['model'] or 'custom'} ({result['dtype']}); device: "
    f"{report.device_name(env)}; jax {versions.get('jax')}, torch {versions.get('torch')}, "
    f"transformers {versions.get('transformers')}. Run {env['time_utc']}, "
    f"{result.get('wall_s', 0) / 60:.1f} min; 1-minute load average at the start "
    f"{'n/a' if not load else f'{load[0]:.1f}'} on {env.get('cpu_cores')} cores (per-cell "
    "load averages are in the JSON). ps_jax prefill: chunk "
    f"{used.get('chunk')}, key block {used.get('kv_block')}, attention "
    f"`{used.get('implementation')}`"
    + (f" (requested {prefill['requested']} failed)." if prefill.get("fallback") else ".")
    + (f" transformers: attention `{env.get('torch_attn_implementation')}` on "
       f"{env.get('torch_device_name') or env.get('torch_device')}."
       if env.get("torch_device") else ""),
    "",
    f"Seconds, median (min-max) over the timed repeats: {cfg['repeats']} per path and cell after "
    f"{cfg['warmup']} warm-up call(s), paths interleaved round by round; `n=` marks paths where "
    f"one call took longer than {cfg['path_budget_s']:g} s / {cfg['repeats']}, whose repeats "
    f"were reduced to fit {cfg['path_budget_s']:g} s (at least {cfg['min_repeats']}). "
    "`build` = PS's re-encode + mapper + merge (median).",
    "",
  ]  # fmt: skip
  rows = []
  for c in cells:
    p = c["paths"]
    build = (p["parallel_synthesis"].get("parts_s") or {}).get("build_prefix")
    rows.append(
      [c["num_branches"], c["branch_length"], f"{c['branch_tokens']:,}",
       f"{c['text_prompt_tokens']:,}"]
      + [_path_cell(p[k]) for k in ("text", "text_floor", "torch_text", "parallel_synthesis")]
      + [_sec(build["median"]) if build else "-"]
      + [_path_cell(p[k]) for k in ("ps_floor", "torch_ps")]
    )  # fmt: skip
  headers = ["N", "L", "branch tok", "text prompt tok", "text", "text floor", "torch text", "PS",
             "build", "PS floor", "torch PS"]  # fmt: skip
  lines += [report.markdown_table(headers, rows), ""]
  gpu_peaks = any(
    _memory(c["paths"][k], "peak") is not None
    for c in cells
    for k in ("text", "parallel_synthesis")
  )
  rows = []
  for c in cells:
    r, p = c["ratios"], c["paths"]
    row = [
      c["num_branches"],
      c["branch_length"],
      r["best_text_path"] or "-",
      _x(r["best_text_over_ps"]),
      _x(r["text_over_text_floor"]),
      _x(r["text_over_best_prefill"]),
      _x(r["ps_over_ps_floor"]),
      _x(r["ps_over_torch_ps"]),
    ]
    for kind in ("working", "peak") if gpu_peaks else ("working",):
      row.append(" / ".join(_mib(_memory(p[k], kind)) for k in ("text", "parallel_synthesis")))
    rows.append(row)
  headers = ["N", "L", "best text", "best text / PS", "text / text floor",
             "text / best prefill", "PS / PS floor", "PS / torch PS",
             "memory MiB text / PS"]  # fmt: skip
  if gpu_peaks:
    headers.append("device peak MiB text / PS")
  lines += [
    "Ratios of medians. Best text = the fastest of text, text floor and torch text in that "
    "cell; best prefill = the faster of text floor and torch text. Memory: XLA's memory plan "
    "of each path's programs, the live bytes at its peak beyond the model weights (the branch "
    "caches count for PS)"
    + ("; device peak: growth of the device's peak bytes in use during the first call."
       if gpu_peaks else "."),
    "",
    report.markdown_table(headers, rows),
    "",
  ]  # fmt: skip
  lines += ["## Targets (issue 13; reported, not asserted)", ""] + _targets_md(result) + [""]
  lines += ["## Checks on this device", ""] + _checks_md(result) + [""]
  lines += ["## What is measured", ""] + [f"- {x}" for x in _method_notes(result)]
  return "\n".join(lines)


def _met(m: bool | None) -> str:
  return "not measured" if m is None else "**met**" if m else "**not met**"


def _targets_md(result) -> list[str]:
  t = result["targets"]
  out = []
  fwd = result.get("forward_prefill") or {}
  if t["prefill_speed_vs_torch"]:
    for tokens, r in sorted(t["prefill_speed_vs_torch"].items(), key=lambda x: int(x[0])):
      out.append(
        f"- ps_jax plain prefill vs transformers at {int(tokens):,} tokens (tok/s ratio, target "
        f">= {TARGETS['prefill_speed_vs_torch']:.1f}): {r['ratio']:.2f}x (per-round "
        f"{r['round_min']:.2f}-{r['round_max']:.2f}x): {_met(r['met'])}; from "
        f"{fwd.get('source')} ({fwd.get('time_utc')})."
      )
  else:
    where = (
      f"{fwd['source']} ({fwd.get('time_utc')}) has no per-length prefill rows: rerun "
      "`launch.bench_forward`"
      if fwd
      else "not in this run (`launch.bench_forward`; `forward_json` quotes its result)"
    )
    out.append(f"- ps_jax plain prefill vs transformers at 512 / 2,048 / 8,192 tokens: {where}.")
  for key, what, sign in (
    ("text_over_best_prefill", "text TTFT / best plain prefill of the same tokens", "<="),
    ("ps_over_torch_ps", "PS / reference-style transformers PS", "<="),
    ("ps_over_ps_floor", "PS / PS floor", "<="),
  ):
    e = t[key]
    where = f" (worst cell N={e['cell'][0]}, L={e['cell'][1]})" if e.get("cell") else ""
    out.append(
      f"- {what}, every cell (target {sign} {e['target']}): worst {_x(e['value'])}{where}: "
      f"{_met(e['met'])}."
    )
  for where, e in t["best_text_over_ps"].items():
    got = f"{_x(e['value'])} (best text: {e.get('best_text_path')})" if e.get("value") else "-"
    out.append(
      f"- best text / PS at N={e['num_branches']}, L={e['branch_length']} on {where.upper()} "
      f"(target >= {e['target']}x): {got}: {e['status']}."
    )
  return out


def _checks_md(result) -> list[str]:
  out = []
  pre = result.get("prefill") or {}
  if pre.get("max_abs_diff_vs_default") is not None:
    out.append(
      f"- Prefill backend {pre['used']}: last-token logits vs the default (XLA blockwise) "
      f"max |diff| {pre['max_abs_diff_vs_default']:.2e}, argmax agrees: {pre['argmax_agrees']}."
    )
  if pre.get("fallback"):
    out.append(f"- Requested prefill {pre['requested']} failed, default used: {pre['fallback']}")
  par = result.get("parity") or {}
  if par:
    out.append(
      f"- torch PS vs ps_jax PS, first-token logits ({result['dtype']}, branches "
      f"{par['branch_lengths']}, each framework computing its own branch caches): max |diff| "
      f"{par['max_abs_diff']:.2e} (logits up to {par['max_abs_logit']:.2f}), argmax agrees: "
      f"{par['argmax_agrees']}."
    )
  agree = [c["first_tokens_agree"] for c in result["cells"]]
  out.append(
    f"- First tokens agree across the text paths in {sum(a['text'] for a in agree)} / "
    f"{len(agree)} cells, across the PS paths in {sum(a['ps'] for a in agree)} / {len(agree)}."
  )
  check = result.get("compile_check") or {}
  if check:
    out.append(
      f"- Mixed branch lengths {check['branch_lengths']} (length bucket(s) "
      f"{check['length_buckets']}), N={check['num_branches']}, {check['api']}: programs "
      "compiled per jitted piece "
      + ", ".join(f"`{k}` {v}" for k, v in check["programs_compiled"].items())
      + f"; compiled once: **{check['compiled_once']}**."
    )
  return out


def _method_notes(result) -> list[str]:
  cfg, env = result["config"], result["environment"]
  return [
    "text: `generate_ids` on the text synthesizer prompt (all N branches spliced in as token "
    "ids), padded to the library's length bucket; TTFT = its `prefill_s` (prefill + first "
    "greedy token, device-synchronised), what `synthesize(method='text')` reports.",
    "text floor: the jitted `generation._prefill` of the same ids at their exact length (no "
    "bucket padding, no host work): the least the ps_jax text path can cost.",
    "torch text: transformers eager (PyTorch, no compilation) on the same ids, one forward "
    "under `torch.inference_mode()`, logits of the last position only, argmax; attention "
    f"`{env.get('torch_attn_implementation')}`, {env.get('torch_threads')} threads.",
    "PS: as `synthesize` composes it: `PrefixBuilder` (re-encode + mapper + merge) then "
    "`generate_ids` of the synthesizer prompt over the merged cache with the LoRA; TTFT = the "
    "two device-synchronised times. Adapter: `Adapter.create` (random mapper input layer, "
    "zero-initialised output layer and LoRA B); timing does not depend on the weights.",
    "PS floor: that prefill program alone over a prefix built beforehand.",
    "torch PS: the authors' release's steps in transformers, from branch caches in hand (each "
    "branch prefilled alone by the torch model, untimed): keys rotated by -P_i with the model's "
    "rotary embedding, the mapper (the ps_jax adapter's weights, one batched call) applied per "
    "branch and layer in fp32, branches concatenated into a `DynamicCache`, the synthesizer "
    "prompt at positions Lmax + t with an all-ones attention mask, last-position logits, "
    "argmax. The LoRA is merged into a copy of the weights (W + s A B), the fastest way to run "
    "it in transformers; ps_jax applies it unmerged (the base weights also serve the workers).",
    "Branches: "
    + (
      "the first L tokens of English text (Python's pydoc topics, model tokenizer)"
      if cfg["branch_source"] == "text" and result["tokenizer"]
      else "random non-special token ids"
    )
    + ", the same in every branch, each prefilled alone from position 0 (`encode_branches`; "
    "the N-branch caches replicate one encoded branch). The cache paths pad the branch count "
    "to the library's buckets (1, 2, 4, 8).",
    f"Text prompts longer than the model's {result['model_config']['max_position_embeddings']:,}"
    "-position context are not run (`over context`); the cache paths only need positions up "
    "to L + the synthesizer prompt.",
    "Protocol (`ps_jax.bench.timing`): warm-up calls first (compilation excluded, JAX compile "
    "events in the JSON), then rounds over all paths of the cell; a path whose first timed call "
    f"exceeds {cfg['path_budget_s']:g} s / {cfg['repeats']} gets fewer repeats (never below "
    f"{cfg['min_repeats']}); slow cells therefore have fewer samples (`n=`).",
    "Memory: XLA's compiled memory analysis (`memory_analysis()`: arguments + outputs + temps "
    "- aliases) per program; PS takes the larger of its build (+ the weights) and its prefill "
    "(+ the branch caches). The JSON also has each torch path's peak (RSS growth on CPU, "
    "allocator peak on CUDA) and, on devices with memory stats, the JAX device peak growth.",
  ]


def write_plot(result: Mapping[str, Any], path: str) -> None:
  """Left: TTFT vs total branch tokens per path (log-log, marker per L). Right: the ratios the
  targets are about, each beside its target (dashed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

  cells = result["cells"]
  markers = ["o", "s", "^", "D", "v", "P"]
  lengths = sorted({c["branch_length"] for c in cells})
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
  for name in PATHS:
    for j, length in enumerate(lengths):
      pts = sorted(
        (c["branch_tokens"], c["paths"][name]["seconds"]["median"])
        for c in cells
        if c["branch_length"] == length and c["paths"][name].get("status") == "ok"
      )
      if pts:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, color=COLORS[name], marker=markers[j % len(markers)], markersize=5, lw=1.2)
  ax.set(xscale="log", yscale="log", xlabel="total branch tokens (N x L)",
         ylabel="time to first token (s, median)")  # fmt: skip
  handles = [Line2D([], [], color=COLORS[n], label=LABELS[n]) for n in PATHS
             if any(c["paths"][n].get("status") == "ok" for c in cells)]  # fmt: skip
  handles += [Line2D([], [], color="gray", ls="", marker=markers[j % len(markers)],
                     label=f"L = {n}") for j, n in enumerate(lengths)]  # fmt: skip
  ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
  ax.grid(True, which="both", alpha=0.3)
  backend = result["environment"].get("jax_backend", "cpu")
  speedup = TARGETS["best_text_over_ps"].get(backend, TARGETS["best_text_over_ps"]["cpu"])[2]
  series = {  # label: (ratio key, colour, target)
    "best text / PS": ("best_text_over_ps", "tab:blue", speedup),
    "text / best prefill": ("text_over_best_prefill", "tab:red", TARGETS["text_over_best_prefill"]),
    "PS / PS floor": ("ps_over_ps_floor", "tab:cyan", TARGETS["ps_over_ps_floor"]),
    "PS / torch PS": ("ps_over_torch_ps", "tab:purple", TARGETS["ps_over_torch_ps"]),
  }
  for label, (key, color, target) in series.items():
    pts = sorted((c["branch_tokens"], c["ratios"][key]) for c in cells if c["ratios"].get(key))
    if pts:
      xs, ys = zip(*pts, strict=True)
      bx.plot(xs, ys, color=color, marker="o", ls="", markersize=5, label=label)
      bx.axhline(target, color=color, lw=0.8, ls="--")
  bx.set(xscale="log", yscale="log", xlabel="total branch tokens (N x L)",
         ylabel="ratio of medians (dashed: target)")  # fmt: skip
  bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
  bx.grid(True, which="both", alpha=0.3)
  fig.suptitle(
    f"TTFT, {result['model'] or 'model'} ({result['dtype']}), "
    f"{report.device_name(result['environment'])}",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(result: Mapping[str, Any], stem: str, *, plot: bool = True) -> dict[str, str]:
  """Writes stem.json, stem.md and (plot=True) stem.png; returns their paths."""
  paths = report.write_report(stem, result, markdown(result))
  if plot:
    paths["png"] = stem + ".png"
    write_plot(result, paths["png"])
  return paths


def rerender(stem: str) -> dict[str, str]:
  """Rewrites stem.md and stem.png from stem.json (e.g. after a change of the layout)."""
  with open(stem + ".json") as f:
    result = json.load(f)
  with open(stem + ".md", "w") as f:
    f.write(markdown(result).rstrip() + "\n")
  write_plot(result, stem + ".png")
  return {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
