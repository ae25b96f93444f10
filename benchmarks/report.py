"""Generates BENCHMARKS.md from benchmarks/results/*.json (and nothing else).

  python -m benchmarks.report
"""

import glob
import json
import math
import os
import statistics

from benchmarks.common import RESULTS, ROOT
from benchmarks.quality import UNLIMITED_EPOCHS

SCALE_PLOT = os.path.join(ROOT, "benchmarks", "plots", "scale.png")


def _pipeline(r) -> list:
  b, p = r["beam_multi_processing_2_workers"], r["pandas_single_process"]
  return [
      "## Build pipeline throughput (`make bench-pipeline`)", "",
      f"{r['rows_in']:,} synthetic KuaiRand-style rows ({r['users']:,} users, "
      f"{r['examples']:,} examples, max_len {r['max_len']}), seed {r['seed']}; wall clock "
      f"including process start, median of {r['repeats']} run(s) per variant, interleaved.", "",
      "| variant | wall (s) | events/s |", "|---|---:|---:|",
      f"| Beam DirectRunner, multi_processing, 2 workers | {b['median_s']:.1f} | {b['events_per_s']:,.0f} |",
      f"| pandas, single process (same transform) | {p['median_s']:.1f} | {p['events_per_s']:,.0f} |",
      "",
      f"Beam / pandas throughput ratio: **{r['beam_over_pandas_throughput']:.2f}**. "
      f"Target: ≥ {r['target_events_per_s']:,} events/s for Beam "
      f"({'met' if b['events_per_s'] >= r['target_events_per_s'] else 'NOT met'}).", "",
  ]


def _ratio(paired: dict) -> str:
  """A paired ratio to 64 plain (train_cost.paired_ratio): median [95% interval]."""
  low, high = paired["ci95"]
  return f"{paired['median']:.2f}× [{low:.2f}, {high:.2f}]"


def _cost(r) -> list:
  c = json.loads(r["config"])
  lines = [
      "## Cost of long histories: training step and single-user inference (`make bench-cost`)", "",
      (f"Preset `{r['preset']}` (d {c['d_model']}, {c['num_layers']} layers, {c['num_heads']} heads, "
      f"ffn {c['ffn_dim']}, k {c['num_query_tokens']}) in every variant; every history full, "
      "input pipeline excluded. The machine's speed drifts by tens of percent within minutes, so "
      f"training steps run in rotation: {r['rounds']} rounds of one step of every variant and "
      "mode in turn; a ratio to 64 plain is the median over rounds of the ratio within the round, "
      "in brackets its bootstrap 95% interval. Inference: median over "
      f"{r['repeats']} rounds of {r['calls']} single-user calls of the traced user tower. "
      "Paper anchor: 256 plain ≈ 6×, 256 compressed ≈ 1.1× of 64 plain."), "",
      "![cost against sequence length](benchmarks/plots/cost.png)", "",
      (f"| variant | tokens | train step (s), batch {r['batch_size']} | examples/s | "
       "1-user inference (ms) | train ratio | inference ratio | FLOPs ratio (train) | "
       "attention scores ratio | paper |"),
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, v in _cost_order(r):
    anchor = r["paper_anchor"].get(name)
    lines.append(
        f"| {name} | {v['sequence_tokens']} | {v['train_step_s']:.3f} | "
        f"{v['train_examples_per_s']:,.0f} | {v['infer_one_user_ms']:.2f} | "
        f"{_ratio(v['train_vs_64_plain'])} | {_ratio(v['infer_vs_64_plain'])} | "
        f"{v['flops_train_vs_64_plain']:.2f}× | {v['score_elements_vs_64_plain']:.2f}× | "
        f"{f'{anchor}×' if anchor else ''} |")
  lines += ["", (f"Training targets per second by training mode (`last`: {r['batch_size']} histories, "
                 f"one target each; `every_event`: {r['every_event_targets']} targets per step, one "
                 "per latest uncompressed event: 16 compressed histories of 48, 12 of 64 plain, "
                 "...); cost per target against 64 plain in the same mode:"), "",
            "| variant | last: targets/s | last: cost/target | every_event: histories × targets | "
            "every_event: targets/s | every_event: cost/target |", "|---|---:|---:|---:|---:|---:|"]
  for name, v in _cost_order(r):
    last, every = v["modes"]["last"], v["modes"]["every_event"]
    lines.append(f"| {name} | {last['targets_per_s']:,.0f} | "
                 f"{_ratio(last['cost_per_target_vs_64_plain'])} | {every['batch_size']} × "
                 f"{every['targets_per_step'] // every['batch_size']} | "
                 f"{every['targets_per_s']:,.0f} | {_ratio(every['cost_per_target_vs_64_plain'])} |")
  f = {name: v["flops"] for name, v in r["variants"].items()}
  share = lambda name, part: f[name][part] / f[name]["forward"]
  lines += ["", ("FLOPs model (`benchmarks/train_cost.py: flops`): token MLP over every event, the "
            "compressor's one shared block over each window, L causal blocks over the sequence "
            "tokens (4Td² + 2T²d + 3Tdf each), a training step ≈ 3× the forward plus the "
            "length-independent candidate tower and in-batch logits. "
            "The attention-scores column counts heads × T² per block: the elements masking and "
            "softmax touch one by one, few FLOPs but memory-bound on a CPU.")]
  if "256 compressed" in f:
    lines += ["", (f"Forward FLOPs of 256 compressed: compressor "
              f"{share('256 compressed', 'compressor'):.0%}, backbone "
              f"{share('256 compressed', 'backbone'):.0%}, token MLP "
              f"{share('256 compressed', 'token_mlp'):.0%}. The compressor is one block over "
              "208 events whatever L is, so its share shrinks as the backbone deepens: the model "
              "puts compressed/64 plain at the paper's 1.1× only at L ≈ "
              f"{r['layers_for_paper_compressed_ratio']:.0f} layers (this preset: "
              f"{c['num_layers']}).")]
  return lines + [""]


def _cost_order(r):
  """Plain variants by length, then the compressed ones."""
  return sorted(r["variants"].items(), key=lambda kv: (kv[1]["compressed"], kv[1]["max_len"]))


AXIS_TITLES = {"max_len": "Sequence length (plain)", "num_query_tokens": "Query tokens k",
               "num_layers": "Layers L", "compression": "Compression at 256 events"}


# Why an axis may not follow the paper here; printed beside any axis that does not agree.
# The common cause, the budget, is put to the test by the budget check section.
LIKELY_CAUSES = {
    "max_len": ("at an equal short budget a longer history costs more per step, so it gets fewer "
                "steps (see the steps column), and a model early in training leans on the latest "
                "events, which every length has. The paper trains on billions of events."),
    "num_query_tokens": ("every extra query token is one more interest vector to learn from the "
                         "same short budget (and, at equal wall time, fewer steps), and the max-sim "
                         "loss trains only the best-matching one per target."),
    "num_layers": ("a deeper stack has more weights to fit, costs more per step (fewer steps at "
                   "equal wall time) and learns more slowly at first; the paper's deeper models "
                   "were trained to convergence."),
    "compression": ("both 256-event variants are far from trained at this budget, where the "
                    "compressed one (about a quarter of the tokens) learns faster per step."),
}


def _axis_values(axis: str, values) -> list:
  return list(values) if axis == "compression" else sorted(values, key=int)


def _ablation(r) -> list:
  b = r["budget"]
  first = next(iter(r["datasets"].values()))
  # The base point is what the other axes hold fixed.
  held = lambda axis: next(iter(first["axes"][axis].values()))["config"]
  base = {**held("max_len"), "max_len": held("num_layers")["max_len"]}
  lines = ["## Ablations: sequence length, query tokens, layers, compression (`make bench-ablation`)",
           "",
           (f"Preset `{r['preset']}` (d 64, 2 heads, ffn 128, dropout 0); base point "
           f"{base['max_len']} events plain, k {base['num_query_tokens']}, "
           f"L {base['num_layers']}; each axis varies one field from it. Equal budget for every point: "
           f"{_ablation_budget_text(b)}; "
           f"seeds {r['seeds']}. In-batch accuracy: validation split, fixed "
           f"batch {b['batch_size']} (the paper's metric; the paper's own batch size is not in our "
           "notes, so compare trends, not levels). HR@K: full ranking of the test split, history "
           "items excluded. Paper numbers are the ones known (DESIGN.md §1); blank where unknown."),
           "", "![ablation curves](benchmarks/plots/ablation.png)", ""]
  for name, d in r["datasets"].items():
    s = d["splits"]
    lines += [f"### {name}", "",
              (f"{d['items']:,} items; examples train {s['train']['examples']:,} / valid "
              f"{s['valid']['examples']:,} / test {s['test']['examples']:,}; mean stored history "
              f"{s['train']['mean_history_len']:.0f} events (build max_len "
              f"{d['build_flags']['max_len']})."), "",
              ("| axis | value | params (transformer / total) | tokens | in-batch acc | paper | "
               "HR@50 | HR@100 | HR@500 | train (s) | steps |"),
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for axis in [a for a in AXIS_TITLES if a in d["axes"]]:
      values, paper = d["axes"][axis], r["paper"].get(axis)
      for value in _axis_values(axis, values):
        v = values[value]
        known = f"{paper[value]:.3f}" if isinstance(paper, dict) and value in paper else ""
        accs = v["val_in_batch_accuracy"]
        acc = f"{v['median_val_in_batch_accuracy']:.3f}" + (
            f" ({', '.join(f'{a:.3f}' for a in accs)})" if len(accs) > 1 else "")
        lines.append(
            f"| {axis} | {value} | {v['params_transformer']:,} / {v['params_total']:,} | "
            f"{v['sequence_tokens']} | {acc} | {known} | {v['median_hr@50']:.3f} | "
            f"{v['median_hr@100']:.3f} | {v['median_hr@500']:.3f} | {v['median_train_s']:.0f} | "
            f"{v.get('median_steps', _steps(b)):,.0f} |")
    # Validation batches are full (drop_remainder), so that many examples are scored.
    n = min(s["valid"]["examples"], b.get("validation_examples") or s["valid"]["examples"])
    n = n // b["batch_size"] * b["batch_size"]
    p = statistics.median(v["median_val_in_batch_accuracy"] for axis in d["axes"].values()
                          for v in axis.values())
    se = math.sqrt(p * (1 - p) / n)
    lines += ["", (f"In-batch accuracy is over {n:,} validation examples: binomial standard error "
              f"≈ {se:.3f} at the median accuracy {p:.3f}. "
              "Train (s): wall time of each run on the shared machine, two runs at a time."), "",
              f"Trends beside the paper's ({name}; a change under 2 standard errors is noise):", "",
              *_trends(d, r["paper"], se), ""]
  return lines + [f"Paper on query tokens: {r['paper']['num_query_tokens']}.", ""]


def _ablation_budget_text(b) -> str:
  if b.get("training_targets", "last") == "last":
    mode = f"the paper's one target per example, batch {b['batch_size']}"
  else:
    mode = (f"every_event training (about {b['targets_per_batch']:,} targets per batch, each "
            "point on a chunk build of its own latest events)")
  amount = (f"{b['train_seconds']:.0f} s of wall time" if b.get("train_seconds")
            else f"{b['epochs']} × {b['steps_per_epoch']} steps")
  return f"{amount}, {mode}"


def _trends(d, paper, se: float) -> list:
  """Per axis: in-batch accuracy from the first to the last value, ours beside the paper's."""
  out = []
  for axis in [a for a in AXIS_TITLES if a in d["axes"]]:
    values = d["axes"][axis]
    acc = {v: values[v]["median_val_in_batch_accuracy"] for v in _axis_values(axis, values)}
    order, known = list(acc), paper.get(axis)
    ours = (f"ours {order[0]} → {order[-1]}: {acc[order[0]]:.3f} → {acc[order[-1]]:.3f}, "
            f"best at {max(order, key=acc.get)}")
    shared = [v for v in order if isinstance(known, dict) and v in known]
    if len(shared) < 2:
      out.append(f"- {axis}: paper: {known}; {ours}. Likely cause of any difference: "
                 f"{LIKELY_CAUSES[axis]}")
      continue
    lo, hi = shared[0], shared[-1]
    change = acc[hi] - acc[lo]
    verdict = ("within noise" if abs(change) < 2 * se
               else "agrees" if (change > 0) == (known[hi] > known[lo]) else "disagrees")
    out.append(f"- {axis}: paper {lo} → {hi}: {known[lo]:.3f} → {known[hi]:.3f}; {ours}; "
               f"{lo} → {hi} here {change:+.3f}: **{verdict}**." +
               ("" if verdict == "agrees" else f" Likely cause: {LIKELY_CAUSES[axis]}"))
  return out


def _steps(budget) -> int:
  return budget["epochs"] * budget["steps_per_epoch"]


def _ablation_budget(r) -> list:
  """Points of the ablation grid again with more steps: do the trends move toward the paper?"""
  before, after = r["compared_to"]["budget"], r["budget"]
  lines = [f"## Ablation budget check: {_steps(after)} steps instead of {_steps(before)} "
           "(`make bench-ablation-budget`)", "",
           (f"Points of a step-budgeted grid ({_ablation_budget_text(before)}; preset "
            f"{r['preset']}, seeds {r['seeds']}) trained {_steps(after) / _steps(before):g}× as "
            "long. If its disagreements with the paper come from the tiny budget, the first-to-last "
            "change of each axis moves toward the paper's sign here."), ""]
  for name, d in r["datasets"].items():
    earlier = r["compared_to"]["datasets"][name]
    lines += [f"### {name}", "", f"| axis | value | in-batch acc at {_steps(before)} steps | "
              f"at {_steps(after)} steps | paper |", "|---|---|---:|---:|---:|"]
    trends = []
    for axis in [a for a in AXIS_TITLES if a in d["axes"]]:
      values, paper = _axis_values(axis, d["axes"][axis]), r["paper"].get(axis)
      now = {v: d["axes"][axis][v]["median_val_in_batch_accuracy"] for v in values}
      for v in values:
        known = f"{paper[v]:.3f}" if isinstance(paper, dict) and v in paper else ""
        lines.append(f"| {axis} | {v} | {earlier[axis][v]:.3f} | {now[v]:.3f} | {known} |")
      lo, hi = values[0], values[-1]
      shared = isinstance(paper, dict) and lo in paper and hi in paper  # every paper trend rises
      trends.append(f"- {axis} {lo} → {hi}: {earlier[axis][hi] - earlier[axis][lo]:+.3f} at "
                    f"{_steps(before)} steps, {now[hi] - now[lo]:+.3f} at {_steps(after)} steps "
                    f"(the paper's: up{f', {paper[hi] - paper[lo]:+.3f}' if shared else ''}).")
    lines += ["", *trends, ""]
  return lines


def _plot_axes(n: int, rows: int = 1):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(rows, n, figsize=(4 * n, 3.4 * rows), squeeze=False)
  return plt, fig, axes


def _save(plt, fig, path: str) -> None:
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_ablation(r, path: str) -> None:
  """Per axis: in-batch accuracy (ours per data set, the paper's known points) and HR@100."""
  names = list(AXIS_TITLES)
  plt, fig, axes = _plot_axes(len(names), rows=2)
  for col, axis in enumerate(names):
    acc, hr = axes[0][col], axes[1][col]
    for name, d in r["datasets"].items():
      if axis not in d["axes"]:
        continue
      values = _axis_values(axis, d["axes"][axis])
      x = list(range(len(values))) if axis == "compression" else [int(v) for v in values]
      acc.plot(x, [d["axes"][axis][v]["median_val_in_batch_accuracy"] for v in values], "o-",
               label=f"ours: {name}")
      hr.plot(x, [d["axes"][axis][v]["median_hr@100"] for v in values], "o-", label=name)
    paper = r["paper"].get(axis)
    if isinstance(paper, dict):  # on its own scale: the levels differ, the trends compare
      keys = ["off", "on"] if axis == "compression" else sorted(paper, key=int)
      px = [["off", "on"].index(k) for k in keys] if axis == "compression" else [int(k) for k in keys]
      twin = acc.twinx()
      twin.plot(px, [paper[k] for k in keys], "k*--", markersize=10)
      twin.set_ylabel("paper in-batch accuracy (★, right)")
    for ax in (acc, hr):
      if axis == "compression":
        ax.set_xticks([0, 1], ["off (256 plain)", "on (compressed)"])
      elif axis == "max_len":
        ax.set_xscale("log", base=2)
      ax.grid(True, alpha=0.3)
    acc.set_title(AXIS_TITLES[axis])
    acc.set_ylabel("val in-batch accuracy")
    hr.set_ylabel("test HR@100 (full ranking)")
  axes[0][0].legend(fontsize=7)
  _save(plt, fig, path)


def plot_cost(r, path: str) -> None:
  """Ratios to 64 plain against the history length: measured, FLOPs model, paper anchors."""
  plt, fig, axes = _plot_axes(1)
  ax = axes[0][0]
  plain = [(n, v) for n, v in _cost_order(r) if not v["compressed"]]
  packed = [(n, v) for n, v in _cost_order(r) if v["compressed"]]
  for key, label, marker in (("train_vs_64_plain", "train step", "o"),
                             ("infer_vs_64_plain", "1-user inference", "s"),
                             ("flops_train_vs_64_plain", "FLOPs model", "x")):
    value = lambda v: v[key]["median"] if isinstance(v[key], dict) else v[key]
    line, = ax.plot([v["max_len"] for _, v in plain], [value(v) for _, v in plain],
                    marker=marker, linestyle="-", label=f"{label}, plain")
    ax.plot([v["max_len"] for _, v in packed], [value(v) for _, v in packed], marker=marker,
            linestyle="none", color=line.get_color(), markersize=11, fillstyle="none",
            label=f"{label}, compressed")
  anchor = r["paper_anchor"]
  ax.plot([256, 256], [anchor["256 plain"], anchor["256 compressed"]], "r*", markersize=12,
          label="paper: 256 plain 6×, compressed 1.1×")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("history length (events)")
  ax.set_ylabel("cost / cost of 64 plain")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=6)
  _save(plt, fig, path)


SERVER_PATHS = {"batching_off": "REST, batching off", "batching_on": "REST, batching on",
                "batching_off_intra_op_1": "REST, batching off, 1 intra-op thread",
                "grpc_batching_off": "gRPC, batching off", "grpc_batching_on": "gRPC, batching on"}


_CI_NOTE = "; in brackets the bootstrap 95% interval of that median over the rounds"


def _ci(interleaved: dict, median: str) -> str:
  """' [low, high]': the interval of the median `median` ("rest_overhead", ...), if the result has it."""
  low_high = interleaved.get(f"{median}_ci95")
  return f" [{low_high[0]:+.0%}, {low_high[1]:+.0%}]" if low_high else ""


def _by_size(results: dict):
  """Catalog cells ("23715 items", ...) smallest first."""
  return sorted(results.items(), key=lambda kv: int(kv[0].split()[0]))


def _serving(r) -> list:
  lines = ["## Serving latency and throughput (`make bench-serving`)", "",
           f"`serving.server` on 127.0.0.1, top {r['top_k']}, max_len {r['max_len']}, "
           f"{r['seconds']:.0f} s closed-loop per concurrency level, one test-split history per "
           "request; the load generators run on the same 2 cores: wrk (C, one thread) for REST, "
           "a grpc.aio client (Python) for gRPC. Floor: the SavedModel's "
           "`serving_default` called in-process for one user. Catalogs beyond the data's own "
           "items are padded with synthetic items around the trained embeddings "
           "(`benchmarks/serving.py`).", "",
           "![latency distributions](benchmarks/plots/serving_latency.png)", ""]
  for catalog, cell in _by_size(r["results"]):
    lines += [f"### {catalog}", "", "| index | path | concurrency | p50 (ms) | p99 (ms) | "
              "requests/s | errors |", "|---|---|---:|---:|---:|---:|---:|"]
    for index in ("scann", "brute_force"):
      if index not in cell:
        continue
      e = cell[index]
      lines.append(f"| {index} | floor (in-process) | 1 | {e['floor']['p50_ms']:.2f} | "
                   f"{e['floor']['p99_ms']:.2f} | | |")
      if "floor_intra_op_1" in e:
        lines.append(f"| {index} | floor (in-process), 1 intra-op thread | 1 | "
                     f"{e['floor_intra_op_1']['p50_ms']:.2f} | {e['floor_intra_op_1']['p99_ms']:.2f} | | |")
      for path, name in SERVER_PATHS.items():
        for c, v in sorted(e.get(path, {}).items(), key=lambda cv: int(cv[0])):
          lines.append(f"| {index} | {name} | {c} | {v['p50_ms']:.2f} | "
                       f"{v['p99_ms']:.2f} | {v['throughput_rps']:.0f} | {v['errors']} |")
    lines.append("")
    for index in ("scann", "brute_force"):
      e = cell.get(index, {})
      overheads = [f"{SERVER_PATHS[p]} **{e[p]['1']['p50_ms'] / e['floor']['p50_ms'] - 1:+.0%}**"
                   for p in ("batching_off", "grpc_batching_off") if "1" in e.get(p, {})]
      if overheads:
        lines.append(f"- {index}: server p50 at concurrency 1 over the floor measured before it: "
                     f"{', '.join(overheads)}; export + index build {e['export_s']:.1f} s.")
      if "interleaved_c1" in e:
        i = e["interleaved_c1"]
        ci = "rest_overhead_ci95" in i
        lines.append(
            f"  - **server overhead at p50, concurrency 1 (target ≤ +25%)**, from {i['rounds']} "
            f"interleaved rounds of {i['seconds_per_round']:g} s (floor, REST from wrk, REST from "
            f"Python, gRPC{', bare REST, bare gRPC' if 'rest_bare' in i else ''} in rotating order; median over rounds "
            f"of p50 / floor p50{_CI_NOTE if ci else ''}): "
            f"REST **{i['rest_overhead_median']:+.0%}**{_ci(i, 'rest_overhead')}, gRPC **{i['grpc_overhead_median']:+.0%}**"
            f"{_ci(i, 'grpc_overhead')} (Python client); REST from a Python client (aiohttp) "
            f"{i['rest_python_overhead_median']:+.0%}{_ci(i, 'rest_python_overhead')}. "
            f"Median round p50: floor {i['floor']['p50_ms']:.2f} ms, REST {i['rest']['p50_ms']:.2f} ms, "
            f"REST from Python {i['rest_python']['p50_ms']:.2f} ms, gRPC {i['grpc']['p50_ms']:.2f} ms.")
        if "rest_bare" in i:
          lines.append(
              "  - what the libraries cost here, from bare servers (`benchmarks/bare_server.py`: decode, "
              "model call, encode, nothing else) and the same clients: over the floor, bare aiohttp (wrk) "
              f"{i['rest_bare_overhead_median']:+.0%}{_ci(i, 'rest_bare_overhead')}, bare grpcio "
              f"{i['grpc_bare_overhead_median']:+.0%}{_ci(i, 'grpc_bare_overhead')}; serving.server's p50 "
              f"over the bare server's: REST {i['rest_over_bare_median']:+.0%}{_ci(i, 'rest_over_bare')}, "
              f"gRPC {i['grpc_over_bare_median']:+.0%}{_ci(i, 'grpc_over_bare')}.")
        lines.append(
            f"  - the same call in-process after idling {i['idle_gap_ms']:g} ms, as a server idles "
            f"between one client's requests: p50 {i['floor_after_idle']['p50_ms']:.2f} ms "
            f"({i['floor_after_idle']['p50_ms'] / i['floor']['p50_ms'] - 1:+.0%} over back to back); "
            f"over that floor REST {i['rest_overhead_after_idle_median']:+.0%}, "
            f"gRPC {i['grpc_overhead_after_idle_median']:+.0%}.")
      one_thread = e.get("batching_off_intra_op_1", {}).get("1")
      if one_thread and "1" in e.get("batching_off", {}):
        lines.append(
            f"  - with `--tensorflow_intra_op_parallelism=1`, REST p50 at concurrency 1 "
            f"{one_thread['p50_ms']:.2f} ms: {one_thread['p50_ms'] / e['batching_off']['1']['p50_ms']:.2f}× "
            f"the default server's, {one_thread['p50_ms'] / e['floor']['p50_ms']:.2f}× the default "
            "floor" + (f"; over the floor on one thread (its own process, measured before the server) "
                       f"**{one_thread['p50_ms'] / e['floor_intra_op_1']['p50_ms'] - 1:+.0%}**."
                       if "floor_intra_op_1" in e else "."))
      inside = [f"{SERVER_PATHS[p]}: client {e[p]['1']['mean_ms']:.2f} ms, of which inside the "
                f"server's handler {e[p]['1']['server_handler_mean_ms']:.2f} ms"
                for p in ("batching_off", "grpc_batching_off")
                if "server_handler_mean_ms" in e.get(p, {}).get("1", {})]
      if inside:
        lines.append(f"  - means at concurrency 1 (floor {e['floor']['mean_ms']:.2f} ms): " + "; ".join(inside))
    if "scann" in cell and "brute_force" in cell:
      s, b = cell["scann"], cell["brute_force"]
      lines.append(f"- ScaNN vs brute force, floor p50: **{b['floor']['p50_ms'] / s['floor']['p50_ms']:.1f}×** "
                   f"faster; server p50 at concurrency 1: "
                   f"{b['batching_off']['1']['p50_ms'] / s['batching_off']['1']['p50_ms']:.1f}×; "
                   f"ScaNN recall@{r['top_k']} against brute force: **{cell['scann_recall_at_k']:.3f}**.")
    lines.append("")
  return lines


def _freshness(r) -> list:
  c = r["config"]
  size, split = c.get("catalog_size"), c.get("servable") == "user_tower"
  title = "## Online learning freshness (`make bench-freshness`)"
  parts = []  # what a run at catalog scale changes, in the order of its flags
  if size or split or c.get("no_server"):
    title = (f"## Online learning freshness at {size or c['items']:,} items"
             f"{', split servables' if split else ''}")
    if r.get("command"):
      parts.append(f"`{r['command']}`.")
    if size:
      parts.append(f"The first model padded to a catalog of {size:,} items (trained ones, then "
                   "synthetic ones: `benchmarks.scale_step start`).")
    if split and c["index_every_s"]:
      parts.append("Served split (deploy/split/models.config): the trainer exports the user tower "
                   f"per micro-batch and the item index every {c['index_every_s']:.0f} s; export "
                   "and server load are the tower's.")
    elif split:
      parts.append("The user tower alone, exported per micro-batch (the item index is another "
                   "job's and another server's).")
    if c.get("no_server"):
      parts.append("**No server** (`--no_server`): the trainer alone; freshness is landed → "
                   "published, and the server's load is bench-scale's swap.")
    if c.get("lazy_adam"):
      parts.append("LazyAdam (only the batch's rows move).")
    if c.get("before_training_examples"):
      parts.append(f"Test-then-train on {c['before_training_examples']} users per batch.")
    if c.get("batch_in_child"):
      parts.append("Each micro-batch in a process of its own.")
    if c.get("export_in_child"):
      parts.append("Each export in a process of its own.")
  scale = "".join(f"{part} " for part in parts)
  # Runs before the trainer timed its checkpoint apart count it in "test + train".
  save_header = "save weights | " if all("save_s" in b for b in r["batches"]) else ""
  lines = [title, "", scale +
           ("`online.train` alone" if c.get("no_server") else
            "`online.train` with `serving.server` on the same machine") + ": synthetic stream "
           f"({c['users']:,} users, {c['items']:,} initial items, {c['new_items_per_batch']} new "
           f"items per batch), small preset, max_len {c['max_len']}, {c['index']} index, top "
           f"{c['top_k']}, `--export_every_s=0`, {c['epochs_per_batch']} epoch(s) per micro-batch. "
           "Files land one at a time, each after the previous one is served. Freshness: from the "
           "file's rename into the stream directory to the first AVAILABLE version trained on it "
           "(REST status polled every 50 ms). With `--export_every_s=S` add up to S seconds.", "",
           "| file | rows | examples | new items | steps | pickup | parse (Beam) | make examples | "
           f"load model | test + train | {save_header}export | server load | **freshness (s)** |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (3 + bool(save_header))]
  for b in r["batches"]:
    save = f"{b['save_s']:.1f} | " if save_header else ""
    lines.append(
        f"| {b['file']} | {b['rows_in']:,} | {b['examples']:,} | {b['new_items']} | "
        f"{b['train_steps']} | {b['pickup_s']:.1f} | {b['parse_s']:.1f} | {b['examples_s']:.1f} | "
        f"{b['load_model_s']:.1f}{' (in place)' if b.get('model_in_place') else ''} | "
        f"{b.get('test_s', 0) + b['train_s']:.1f} | {save}{b['export_s']:.1f} | {b['load_s']:.1f} | "
        f"**{b['freshness_s']:.1f}** |")
  peaks = r.get("peak_rss_mb") or {}
  memory = (" Peak RSS: " + ", ".join(f"{name} {mb:,.0f} MB" for name, mb in sorted(peaks.items()))
            + "." if peaks else "")
  note = [r["note"], ""] if r.get("note") else []
  load = r.get("load_client")
  if load:
    rate = load.get("calls_per_s", "back to back")
    pace = rate if isinstance(rate, str) else f"{rate:g} calls/s"
    memory += (f" Under load: one client called the served model throughout ({pace}), "
               f"{load['calls']:,} calls, {load['failed']} failed.")
  return lines + ["", f"Median freshness **{r['median_freshness_s']:.1f} s** (min "
                  f"{r['min_freshness_s']:.1f}, max {r['max_freshness_s']:.1f}) over "
                  f"{len(r['batches'])} batches.{memory}", ""] + note


def _growth_word(slope: float) -> str:
  return "flat" if slope < 0.25 else "sublinear" if slope < 0.85 else "linear" if slope < 1.15 else "superlinear"


def _scale(r) -> list:
  rows, k = r["sizes"], r["top_k"]
  levels = list(rows[0]["latency"])
  lines = ["## Catalog scale (`make bench-scale`)", "", f"`{r['command']}`", "",
           "bench-serving's trained model, its item embeddings padded with synthetic items around "
           "the trained ones; ScaNN index (serving/retriever.py's parameters), batching off, REST "
           f"from wrk for {r['seconds']} s per concurrency. Refresh: the next version renamed into "
           "the base while a client calls the server back to back; swap: from the rename to "
           f"AVAILABLE; refresh = export + swap ({_refresh_export(rows[0])}; from a log file "
           "landed to a version trained on it and served: the online learning freshness sections at each "
           "size). Each export runs in a process of its own, "
           "before the server starts (at 10M items the exporter and a server holding two versions "
           "do not fit in 24 GB together).", "",
           "| items | export (s) | SavedModel (MB) | server RSS (MB) | "
           + " | ".join(f"p50 / p99 c{c} (ms)" for c in levels)
           + f" | recall@{k} | swap (s) | refresh (s) | RSS during swap (MB) | failed calls |",
           "|---:|" + "---:|" * (8 + len(levels))]
  mb = lambda b: f"{b / 2**20:,.0f}"
  for row in rows:
    latency = " | ".join(f"{row['latency'][c]['p50_ms']:.1f} / {row['latency'][c]['p99_ms']:.1f}"
                         for c in levels)
    refresh = row["refresh"]
    lines.append(f"| {row['items']:,} | {row['export_s']:.1f} | {mb(row['saved_model_bytes'])} | "
                 f"{mb(row['server_rss_bytes'])} | {latency} | {row[f'recall@{k}']:.4f} | "
                 f"{row['swap_s']:.1f} | {row['refresh_s']:.1f} | "
                 f"{mb(refresh['server_peak_rss_bytes'])} | {refresh['failed']} of {refresh['calls']:,} |")
  for missing in r.get("not_measured", []):
    lines.append(f"| {missing['items']:,} | not measured: {missing['reason']} |" + " |" * (7 + len(levels)))
  lines += _scale_split(rows)
  if r["growth"]:
    lines += ["", "Growth with the catalog (slope of log cost against log items; 1 = linear): " + ", ".join(
        f"{name} {slope:.2f} ({_growth_word(slope)})" for name, slope in r["growth"].items()) + ".",
        "", f"![cost against catalog size](benchmarks/plots/{os.path.basename(SCALE_PLOT)})"]
  return lines + [""]


def _refresh_export(row) -> str:
  """How a scale row's refresh export was had: results before 2026-12-01 exported it again."""
  if "refresh_export_s" in row:
    return "the next version exported again"
  return ("a refresh exports the same size again: the next version is version 1's files, whose "
          "export seconds stand for its own")


def _scale_split(rows) -> list:
  """The split servables' table (bench-scale --split) of the sizes that measured it."""
  rows = [row for row in rows if "split" in row]
  if not rows:
    return []
  mb = lambda b: f"{b / 2**20:,.0f}"
  lines = ["", "**User tower and item index as two servables** of one server "
           "(`serving.export --servable=user_tower|item_index`, `deploy/split/models.config`); the "
           "tower holds an item table of the catalog's size (trained rows, then synthetic ones). "
           "Latency: the tower call, then the index call, one user at a time over REST. Refresh: "
           "a new tower version renamed in while a client makes both calls back to "
           "back (the index keeps its version), then a new index version the same way; refresh = "
           "export + swap.", "",
           "| items | tower export (s) | tower (MB) | index export (s) | index (MB) | server RSS (MB) "
           "| p50 / p99 c1, two calls (ms) | tower swap / refresh (s) | index swap / refresh (s) "
           "| RSS during swaps (MB) | failed calls (tower, index swap) | index versions in tower swap |",
           "|---:|" + "---:|" * 10 + "---|"]
  for row in rows:
    split = row["split"]
    tower, index, latency = split["tower_refresh"], split["index_refresh"], split["latency_c1"]
    peak = max(tower["server_peak_rss_bytes"], index["server_peak_rss_bytes"])
    lines.append(f"| {row['items']:,} | {split['user_tower_export_s']:.1f} | "
                 f"{mb(split['user_tower_bytes'])} | {split['item_index_export_s']:.1f} | "
                 f"{mb(split['item_index_bytes'])} | {mb(split['server_rss_bytes'])} | "
                 f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} | "
                 f"{split['tower_swap_s']:.1f} / {split['tower_refresh_s']:.1f} | "
                 f"{split['index_swap_s']:.1f} / {split['index_refresh_s']:.1f} | {mb(peak)} | "
                 f"{tower['failed']} of {tower['calls']:,}, {index['failed']} of {index['calls']:,} | "
                 f"{split['index_versions']} |")
  return lines


def plot_scale(r, path: str, landed_to_served=None) -> None:
  """Each cost against catalog size, log-log; landed_to_served: {items: median seconds from a
  log file landed to a version trained on it served} (bench-freshness at that size)."""
  rows = r["sizes"]
  items = [row["items"] for row in rows]
  panels = {"export + index build (s)": [row["export_s"] for row in rows],
            "SavedModel (MB)": [row["saved_model_bytes"] / 2**20 for row in rows],
            "server RSS (MB)": [row["server_rss_bytes"] / 2**20 for row in rows],
            "swap: landed to AVAILABLE (s)": [row["swap_s"] for row in rows]}
  for c in rows[0]["latency"]:
    panels[f"p99 at concurrency {c} (ms)"] = [row["latency"][c]["p99_ms"] for row in rows]
  panels = {label: (items, values) for label, values in panels.items()}
  if landed_to_served:
    sizes = sorted(landed_to_served)
    panels["log file landed to served, online (s)"] = (sizes, [landed_to_served[n] for n in sizes])
  plt, fig, axes = _plot_axes(math.ceil(len(panels) / 2), rows=2)
  flat = [a for row in axes for a in row]
  for ax, (label, (x, values)) in zip(flat, panels.items()):
    ax.loglog(x, values, "o-")
    ax.set_xlabel("catalog items")
    ax.set_title(label)
  for ax in flat[len(panels):]:
    ax.axis("off")
  _save(plt, fig, path)


def _soak(r) -> list:
  c = r["config"]
  unexpected = sum(v["count"] for v in r["hostile_unexpected_answers"].values())
  lines = ["## Soak under hostile input (`make bench-soak`)", "",
           f"`serving.server` with its default limits on the demo's model (ScaNN export), "
           f"{c['seconds'] / 60:g} minutes at concurrency {c['concurrency']}: valid predicts (REST and "
           f"gRPC) and, {c['hostile_fraction']:.0%} of calls, a case of `benchmarks/hostile_requests.py` "
           f"({c['rest_cases']} REST, {c['grpc_cases']} gRPC), plus {c['slow_clients']} clients opening "
           f"slow-header and short-body connections; {c['swaps']} version swaps.", "",
           "| valid requests | **failed** | p50 (ms) | **p99 (ms)** | hostile requests | "
           "answered other than expected | slow connections | slowest closed after (s) | "
           "RSS after warm-up (MB) | RSS at the end (MB) | **end / after warm-up** | RSS peak (MB) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| {r['valid_requests']:,} | **{r['failed_valid_requests']}** | {r['valid_p50_ms']:.0f} | "
           f"**{r['valid_p99_ms']:.0f}** | {r['hostile_requests']:,} | {unexpected} | "
           f"{r['slow_connections']} | {r['slow_closed_after_s_max']:.1f} | "
           f"{r['rss_first_window_after_warmup_mb']:.0f} | {r['rss_last_window_mb']:.0f} | "
           f"**{r['rss_last_over_first']:.3f}** | {r['rss_peak_mb']:.0f} |", "",
           f"Swaps at {', '.join(f'{t:.0f} s' for t in r['swaps_at_s'])}; version "
           f"{r['served_version_at_end']} served at the end. RSS: the median over the "
           f"{r['rss_window_s']:.0f} s after {c['warmup_s']:.0f} s of warm-up against the median "
           f"over the last {r['rss_window_s']:.0f} s.", ""]
  for name, v in sorted(r["hostile_unexpected_answers"].items()):
    lines.append(f"- {name}: {v['count']} unexpected answer(s), e.g. `{v['answers'][0][:120]}`")
  return lines + ["", "![RSS over time](benchmarks/plots/soak_rss.png)", ""]


def plot_soak(r, path: str) -> None:
  plt, fig, axes = _plot_axes(1)
  ax = axes[0][0]
  ax.plot([t for t, _ in r["rss_mb"]], [m for _, m in r["rss_mb"]], "-", label="server RSS")
  for i, t in enumerate(r["swaps_at_s"]):
    ax.axvline(t, color="gray", linestyle="--", label="version swap" if i == 0 else None)
  ax.set_xlabel("seconds")
  ax.set_ylabel("RSS (MB)")
  ax.set_ylim(bottom=0)
  ax.legend(loc="lower right")
  ax.set_title("serving.server RSS under mixed traffic")
  _save(plt, fig, path)


def learning_curve_path(dataset_key: str) -> str:
  return os.path.join(ROOT, "benchmarks", "plots", f"learning_curve_{dataset_key}.png")


def plot_learning_curves(r, _path=None) -> None:
  """One plot per data set: valid HR@100 of each trained model against its training seconds."""
  for key, d in r["datasets"].items():
    curves = {n: m["learning_curve"]["points"] for n, m in d["models"].items() if "learning_curve" in m}
    if not curves:
      continue
    plt, fig, axes = _plot_axes(1)
    ax = axes[0][0]
    for name, points in curves.items():
      line, = ax.plot([p["train_seconds"] for p in points], [p["hr@100"] for p in points], ".-",
                      label=QUALITY_NAMES.get(name, name))
      selected = d["models"][name]["learning_curve"].get("selected_step")
      for p in points if selected else ():  # the point whose weights the model kept
        if p["step"] == selected:
          ax.plot(p["train_seconds"], p["hr@100"], "o", markersize=9, fillstyle="none",
                  color=line.get_color())
    ax.set_xlabel("training seconds")
    ax.set_ylabel("full-catalog HR@100 (valid)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title(f"{d['title']}: learning curves")
    _save(plt, fig, learning_curve_path(key))


def plot_serving(r, path: str) -> None:
  """Latency distributions (percentile curves) per catalog, index and API at concurrency 1."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(r["results"]), figsize=(6 * len(r["results"]), 4), squeeze=False)
  for ax, (catalog, cell) in zip(axes[0], _by_size(r["results"])):
    for index in ("scann", "brute_force"):
      e = cell.get(index)
      if not e:
        continue
      runs = [("floor", e["floor"])] + [(f"{name}, c={c}", v) for p, name in SERVER_PATHS.items()
                                         for c, v in e.get(p, {}).items() if c == "1"]
      for color, (name, v) in enumerate(runs):  # a color per path, a line style per index
        q = sorted(v["distribution_ms"], key=float)
        ax.plot([v["distribution_ms"][k] for k in q], [float(k) for k in q], marker=".",
                color=f"C{color}", linestyle="-" if index == "scann" else "--", label=f"{index}: {name}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("percentile")
    ax.set_title(catalog)
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


QUALITY_NAMES = {"most_popular": "Most popular", "item_knn": "ItemKNN (cosine)",
                 "sasrec_bce": "SASRec (BCE, as published)",
                 "sasrec_in_batch": "SASRec (in-batch softmax)", "kuaiformer": "KuaiFormer"}
TRAINED = ("sasrec_bce", "sasrec_in_batch", "kuaiformer")


def _kuaiformer_batches(b) -> str:
  if b.get("kuaiformer_targets") == "every_event":
    return (f"about {b['kuaiformer_targets_per_batch']} targets per batch for KuaiFormer "
            "(every_event training on the chunk build, batches of similar history length)")
  return f"{b['kuaiformer_batch_size']} for KuaiFormer (one example per target)"


def _metric_order(item) -> tuple:
  """hr@K by K, then ndcg@K: (name, value) pairs in table order."""
  name, k = item[0].split("@")
  return (name != "hr", int(k))


def _with_interval(model: dict, protocol: str, metric: str) -> str:
  value = f"{model[protocol][metric]:.4f}"
  interval = model.get("intervals", {}).get(protocol, {}).get(metric)
  return f"{value} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else value


def _kept_weights(budget: dict, kuaiformer: bool) -> str:
  """Which of its weights a trained model of the budget ends on (tfkf.train --select_by);
  `kuaiformer`: whether the run trained one (its own --kuaiformer_select_by)."""
  kept = _weights_by(budget.get("select_by", "val_loss"), budget)
  own = budget.get("kuaiformer_select_by") if kuaiformer else None
  return kept + (f"; KuaiFormer keeps {_weights_by(own, budget)}" if own else "")


def _weights_by(metric: str, budget: dict) -> str:
  if metric == "val_loss":
    return "its epoch with the lowest validation loss, `tfkf.train`'s EarlyStopping"
  return (f"its learning curve's best point by valid {_curve_metric_name(metric)} on "
          f"{budget['curve_examples']} examples, `tfkf.train --select_by={metric}`, "
          "without a validation-loss pass")


def _selected_points(models: dict) -> str:
  """'KuaiFormer step 1,200 of 2,600 (valid HR@100 0.2650), ...' for runs that chose by a curve metric."""
  kept = []
  for name, m in models.items():
    curve = m.get("learning_curve", {})
    if curve.get("selected_by"):
      point = next(p for p in curve["points"] if p["step"] == curve["selected_step"])
      metric = curve["selected_by"]
      kept.append(f"{QUALITY_NAMES.get(name, name)} step {point['step']:,} of {m['steps']:,} "
                  f"(valid {_curve_metric_name(metric)} {point[metric]:.4f})")
  return "; ".join(kept)


def _curve_metric_name(metric: str) -> str:
  """'hr@500' -> 'HR@500', 'sampled_hr@10' -> 'sampled HR@10'."""
  sampled = metric.startswith("sampled_")
  return ("sampled " if sampled else "") + metric.removeprefix("sampled_").upper()


def _loss_and_augmentation(datasets: dict) -> str:
  """The auxiliary SASRec loss and history augmentation of the run's KuaiFormer (its
  recorded config, which outlives the preset's defaults)."""
  by_title = {d["title"]: d["models"]["kuaiformer"]["config"] for d in datasets.values()
              if "kuaiformer" in d["models"]}
  configs = list(by_title.values())
  weights = {c.get("uniform_bce_weight", 0.0) for c in configs}
  text = "".join(f", auxiliary SASRec loss weight {w:g}" if w else ", no auxiliary loss"
                 for w in sorted(weights))
  for key, what in (("event_substitution", "history events replaced by random items at rate"),
                    ("event_dropout", "whole history events dropped at rate"),
                    ("contrastive_weight", "contrastive loss between two passes, weight")):
    text += "".join(f", {what} {v:g}" for v in sorted({c.get(key, 0.0) for c in configs}) if v)
  if not all(c.get("candidate_bias", True) for c in configs):
    text += ", no bias in the candidate projection"
  if any(c.get("first_event_targets") for c in configs):
    text += ", each user's first event a target too (of the empty history)"
  used = "; ".join(f"{title}: {', '.join(c['item_features']) or 'none'}" for title, c in by_title.items())
  return text + f", item side features ({used})"


def _quality(r) -> list:
  b = r["budget"]
  titles = ", ".join(d["title"] for d in r["datasets"].values())
  trained = [n for n in QUALITY_NAMES if n in TRAINED and any(n in d["models"] for d in r["datasets"].values())]
  by_epochs = b.get("max_epochs", UNLIMITED_EPOCHS) < UNLIMITED_EPOCHS
  per_model = f"{b['max_epochs']} epochs" if by_epochs else f"{b['train_seconds']:.0f} s"
  budget = (f"{b['max_epochs']} epochs of {b['steps_per_epoch']} steps each (within "
            f"{b['train_seconds']:.0f} s; every trained model keeps the weights of "
            if by_epochs else
            f"equal wall time, {b['train_seconds']:.0f} s each (stopping at the end of the first "
            f"{b['steps_per_epoch']}-step epoch past it; every trained model keeps the weights of ")
  budget += _kept_weights(b, "kuaiformer" in trained) + ")"
  lines = [f"## Retrieval quality against baselines: {titles}, {per_model} per trained model "
           f"({', '.join(QUALITY_NAMES[n] for n in trained)})", "",
           f"`{r.get('command', 'make bench-quality')}`", "",
           (f"Test split (each user's last event unless the data set says otherwise), every "
            f"model on the same examples. Sampled: "
            f"{r['protocol']['sampled']} (SASRec's protocol). Full: {r['protocol']['full']}. "
            f"Budget: {budget}, batch {b['sasrec_batch_size']} "
            f"for SASRec (one example per user: the published per-user sample), "
            + (f"{_kuaiformer_batches(b)}. KuaiFormer: preset {b.get('kuaiformer_preset', 'paper')} "
               f"with {json.dumps(b['kuaiformer_overrides'])}, learning rate "
               f"{b.get('kuaiformer_learning_rate', 1e-3):g} "
               f"({b.get('kuaiformer_lr_schedule', 'constant')})"
               + (f", weights averaged with momentum {b['kuaiformer_average_weights']:g}"
                  if b.get("kuaiformer_average_weights") else "")
               + _loss_and_augmentation(r["datasets"]) if "kuaiformer" in trained else
               "no KuaiFormer in this run")
            + f". Seed {r['seed']}. "
            "train (s): the whole `tfkf.train` process (start-up, validation and "
            "learning-curve points included); "
            "ItemKNN: its fit."), ""]
  for key, d in r["datasets"].items():
    prefix = d["builds"]["prefix"]
    split = " ".join(d.get("split_flags", [])) or "--split=leave_one_out"
    intervals = (f" Brackets: {r['protocol']['intervals']}."
                 if any("intervals" in m for m in d["models"].values()) else "")
    lines += [f"### {d['title']}", "",
              (f"{prefix['users']:,} users, {prefix['items']:,} items, {prefix['events']:,} events; "
               f"{prefix['splits']['test']['examples']:,} test examples (`{split}`).{intervals}"), "",
              ("| model | sampled HR@10 | sampled NDCG@10 | HR@10 | HR@50 | HR@100 | HR@500 | "
               "NDCG@10 | MRR | params | train (s) | steps |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, anchor in d["anchors"].items():
      lines.append(f"| {name} | {anchor['hr@10']:.4f} | {anchor['ndcg@10']:.4f} | | | | | | | | | |")
    order = sorted(d["models"], key=lambda n: list(QUALITY_NAMES).index(n)
                   if n in QUALITY_NAMES else len(QUALITY_NAMES))
    for name in order:
      m = d["models"][name]
      cell = lambda protocol, metric, m=m: _with_interval(m, protocol, metric)
      steps = f"{m['steps']:,}" if "steps" in m else ""
      seconds = f"{m['train_seconds']:.0f}" if "train_seconds" in m else ""
      params = f"{m['params']:,}" if m["params"] else ""
      lines.append(
          f"| {QUALITY_NAMES.get(name, name)} | {cell('sampled', 'hr@10')} | "
          f"{m['sampled']['ndcg@10']:.4f} | {cell('full', 'hr@10')} | {cell('full', 'hr@50')} | "
          f"{cell('full', 'hr@100')} | {cell('full', 'hr@500')} | {cell('full', 'ndcg@10')} | "
          f"{m['full']['mrr']:.4f} | {params} | {seconds} | {steps} |")
    reused = [f"{QUALITY_NAMES.get(n, n)} ({m['reused_from']['date'][:10]})"
              for n, m in d["models"].items() if "reused_from" in m]
    if reused:
      lines += ["", "Evaluated from the saved run of an earlier invocation with the same builds "
                    "and budget (`--reuse`), not trained again: " + ", ".join(reused) + "."]
    selected = _selected_points(d["models"])
    if selected:
      lines += ["", f"Weights kept (the learning curve's best point): {selected}."]
    if d.get("kuaiformer_minus"):
      lines += ["", "KuaiFormer minus each model, paired over the same test examples, with its "
                    "95% interval: " + "; ".join(
                        f"{QUALITY_NAMES.get(other, other)}: " + ", ".join(
                            f"{metric.upper()} {v['difference']:+.4f} "
                            f"[{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]"
                            for metric, v in sorted(by_metric["full"].items(), key=_metric_order)
                            if metric != "hr@10")
                        for other, by_metric in d["kuaiformer_minus"].items()) + "."]
    lines += _by_target_popularity(d.get("by_target_popularity"), order)
    if any("learning_curve" in m for m in d["models"].values()):
      examples = r["budget"].get("curve_examples")
      lines += ["", f"Learning curves (full-catalog HR@100 on {examples} valid examples against "
                    f"training seconds): ![learning curves](benchmarks/plots/"
                    f"{os.path.basename(learning_curve_path(key))})"]
    ours = d["models"].get("sasrec_bce")
    for name, anchor in d["anchors"].items() if ours else ():
      lines += ["", f"SASRec (BCE) against {name}, sampled: " + ", ".join(
          f"{k.upper()} {ours['sampled'][k] / v - 1:+.1%}" for k, v in anchor.items()) + "."]
    lines.append("")
  return lines


def _by_target_popularity(table, order) -> list:
  """The quality section's table of hit rates by the test target's train count."""
  if not table:
    return []
  bounds = table["lower_bounds"]
  labels = [f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in zip(bounds, bounds[1:])]
  labels.append(f"{bounds[-1]}+")
  names = [n for n in order if n in table["models"]]
  cell = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
  lines = ["", "Sampled HR@10 / HR@100 by how often the test target is a training target "
               "(where in the catalog each model wins):", "",
           "| target's train count | test examples | " + " | ".join(
               QUALITY_NAMES.get(n, n) for n in names) + " |",
           "|---|---:|" + "---:|" * len(names)]
  for i, label in enumerate(labels):
    lines.append(f"| {label} | {table['examples'][i]:,} | " + " | ".join(
        f"{cell(table['models'][n]['sampled_hr@10'][i])} / {cell(table['models'][n]['hr@100'][i])}"
        for n in names) + " |")
  return lines


PLOTS = {"serving": (plot_serving, os.path.join(ROOT, "benchmarks", "plots", "serving_latency.png")),
         "ablation": (plot_ablation, os.path.join(ROOT, "benchmarks", "plots", "ablation.png")),
         "cost": (plot_cost, os.path.join(ROOT, "benchmarks", "plots", "cost.png")),
         "soak": (plot_soak, os.path.join(ROOT, "benchmarks", "plots", "soak_rss.png")),
         "quality": (plot_learning_curves, None),
         "scale": (plot_scale, SCALE_PLOT)}
def _interests(r) -> list:
  names = ", ".join(r["datasets"])
  lines = [f"## Multi-interest use (maxsim over k interests): {names}", "", f"`{r['command']}`", "",
           "Per test example of a trained KuaiFormer: which interest (query token) wins the "
           "target's maxsim, and how many items of the served top K (history excluded) each "
           "interest contributes; 'largest first' sorts each user's contributions.", ""]
  for name, d in r["datasets"].items():
    k, top = d["k"], d["top_k"]
    lines += [f"### {name}: {d['examples']:,} {d['split']} examples, k = {k}, top {top}", "",
              "| | " + " | ".join(f"interest {j + 1}" for j in range(k)) + " |",
              "|---|" + "---:|" * k]
    rows = {"wins the target": d["target_wins"],
            f"wins the target, when it is in the top {top}": d["hit_target_wins"],
            f"items of the top {top}": d["top_k_from_interest"],
            f"items of the top {top}, largest first": d["top_k_from_interest_sorted"]}
    for label, values in rows.items():
      fmt = "{:.1f}" if "items" in label else "{:.1%}"
      lines.append(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " |")
    lines += ["", f"Interests contributing to a top {top}: {d['interests_in_top_k']:.2f} of {k} "
                  "on average.", ""]
  return lines


RENDERERS = {"pipeline": _pipeline, "interests": _interests, "cost": _cost, "serving": _serving,
             "freshness": _freshness, "ablation": _ablation, "ablation_budget": _ablation_budget,
             "quality": _quality, "soak": _soak, "scale": _scale}


def renderer(benchmark: str):
  return RENDERERS[benchmark]


def _footer(r) -> str:
  m = r["machine"]
  return (f"<sub>{r['benchmark']}: {r['date']}, {m['cpus']} × {m['cpu_model']}, "
          f"Python {m['python']}, {', '.join(f'{k} {v}' for k, v in r.get('versions', {}).items())}</sub>")


def _screens(paths) -> list:
  """Short experiments kept as evidence under results/screens/, named here, not rendered."""
  if not paths:
    return []
  return (["## Screens (short experiments, not rendered)", "",
           "Kept as evidence in `benchmarks/results/screens/`; the closing notes of the issues "
           "that ran them say what they show.", ""]
          + [f"- `{os.path.basename(p)}`" for p in sorted(paths)] + [""])


def render(results, screens=()) -> str:
  lines = ["# Benchmarks", "",
           "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; "
           "do not edit by hand. Machines are shared and noisy: compare the ratios.", ""]
  # Freshness at catalog scale in order of size; other kinds keep their file order.
  size = lambda r: r["config"].get("catalog_size") or 0 if r["benchmark"] == "freshness" else 0  # noqa: E731
  for r in sorted(results, key=lambda r: (r["benchmark"], size(r))):
    lines += renderer(r["benchmark"])(r) + [_footer(r), ""]
  return "\n".join(lines + _screens(screens))


def main():
  results = []
  for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
    with open(path) as f:
      results.append(json.load(f))
  screens = glob.glob(os.path.join(RESULTS, "screens", "*.json"))
  text = render(results, screens)  # before opening the file: a failing renderer leaves BENCHMARKS.md as it was
  with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
    f.write(text)
  landed = {r["config"]["catalog_size"]: r["median_freshness_s"] for r in results
            if r["benchmark"] == "freshness" and r["config"].get("catalog_size")}
  for r in results:
    if r["benchmark"] in PLOTS:
      plot, path = PLOTS[r["benchmark"]]
      plot(r, path, **({"landed_to_served": landed} if r["benchmark"] == "scale" else {}))
  print(f"BENCHMARKS.md from {len(results)} result file(s)")


if __name__ == "__main__":
  main()
