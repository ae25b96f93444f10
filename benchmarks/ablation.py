"""make bench-ablation: the paper's ablations (Table 3, Figure 3) on two data sets.

One base point (preset small: d 64, 2 heads, ffn 128; --base_len events plain,
--base_layers layers, --base_query_tokens interests) and four axes around it:

  max_len           --max_lens (plain: no compression)
  num_query_tokens  --query_tokens
  num_layers        --layers
  compression       off / on at --compressed_len events (--compression_windows)

Data sets: the two shared logs of bench-quality (`ml`: ml-latest-small, each user's
last 10 events held out; `games`: SASRec Amazon Games, leave-one-out), ml-latest-small
leave-one-out (`movielens`) and the planted synthetic short-video log (`synthetic`,
beam_pipelines.synthetic, with longer histories than its defaults so that 256 events
exist). Each is built at the longest length and cached in --cache_dir; the reader keeps
the latest max_len events of each history.

Training mode (--training_targets): `every_event` (the sequence-level training of the
cpu preset) trains each point on a --layout=chunks build whose chunks are its own
uncompressed latest events (one build per distinct length; their valid and test splits
are the same examples), about --targets_per_batch targets per batch; `last` (the
paper's one target per example) on the per-target build. Every distinct config gets
the same budget, --train_seconds of wall time (or, at 0, --epochs x --steps), two
worker processes on 2 cores, then records:

  * validation in-batch accuracy at the fixed --batch_size (the paper's metric),
  * full-ranking HR@{50,100,500} on the test split (tfkf.evaluate's protocol,
    history items excluded),
  * parameter counts (total, and the transformer without the embedding tables).

  python -m benchmarks.ablation --datasets ml,games --train_seconds 120 --steps 50 \
      --validation_examples 2048 --batch_size 64 --seeds 0

With --compare_to=<an earlier ablation.json> it is a budget check instead: the points
run here (usually a subset, with more steps) are set beside the same points of the
earlier run, and the result is written as ablation_budget.json.
"""

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time

from benchmarks import common, quality
from benchmarks.quality import UNLIMITED_EPOCHS

ML_DIR = os.path.join(os.path.dirname(common.ROOT), "shared", "data", "movielens_latest_small")
# = tfkf.features.COMPRESSION_WINDOWS, copied so the parent process never loads TensorFlow.
PAPER_WINDOWS = (64, 64, 16, 16, 16, 16, 16)
# What the paper reports (DESIGN.md §1): in-batch accuracy at a fixed batch size.
PAPER = {"max_len": {"8": 0.325, "64": 0.417, "256": 0.441},
         "num_layers": {"1": 0.391, "5": 0.435},
         "compression": {"off": 0.441, "on": 0.445},
         "num_query_tokens": "more query tokens help, with diminishing returns"}
HR_CUTOFFS = (50, 100, 500)


def build_data(name: str, args, chunk_len: int = 0) -> str:
  """The built data set `name` (cached by its build flags): its data_dir. chunk_len > 0: the
  --layout=chunks build of that many targets per example."""
  if name in quality.DATASETS:
    spec = quality.DATASETS[name]
    suffix = f"chunks{chunk_len}" if chunk_len else "prefix"
    out = os.path.join(args.cache_dir, name, suffix)
    return quality.build(spec, out, args.build_len, *quality.build_flags(suffix, spec))["dir"]
  if name == "movielens":
    raw = {"ratings": args.movielens_ratings, "movies": args.movielens_movies}
    gen = None
    build = ["--format=movielens", f"--input={raw['ratings']}", f"--item_features={raw['movies']}"]
  else:
    gen = [f"--users={args.users}", f"--items={args.items}", f"--seed={args.data_seed}",
           f"--min_events={args.min_events}", f"--max_events={args.max_events}"]
    build = ["--format=kuairand", f"--max_examples_per_user={args.max_examples_per_user}"]
  build += ["--runner=DirectRunner", f"--max_len={args.build_len}"]
  if chunk_len:
    build += ["--layout=chunks", f"--chunk_len={chunk_len}"]
  key = hashlib.sha1(json.dumps([name, gen, build]).encode()).hexdigest()[:12]
  root = os.path.join(args.cache_dir, f"{name}-{key}")
  data_dir = os.path.join(root, "data")
  if not os.path.exists(os.path.join(data_dir, "metadata.json")):
    if gen:
      log = os.path.join(root, "raw", "log.csv")
      common.timed_module("beam_pipelines.synthetic", *gen, f"--output={log}")
      build += [f"--input={log}", f"--item_features={os.path.join(root, 'raw', 'items.csv')}"]
    common.timed_module("beam_pipelines.build", *build, f"--output_dir={data_dir}")
  return data_dir


def points(args) -> dict:
  """{axis: {value: config overrides}} over the small preset; the base point is shared."""
  base = {"max_len": args.base_len, "compression_windows": [], "dropout": 0.0,
          "num_query_tokens": args.base_query_tokens, "num_layers": args.base_layers}
  axes = {"max_len": {str(v): {**base, "max_len": v} for v in args.max_lens},
          "num_query_tokens": {str(v): {**base, "num_query_tokens": v} for v in args.query_tokens},
          "num_layers": {str(v): {**base, "num_layers": v} for v in args.layers}}
  if args.compressed_len:
    plain = {**base, "max_len": args.compressed_len}
    axes["compression"] = {"off": plain,
                           "on": {**plain, "compression_windows": list(args.compression_windows)}}
  return axes


def latest_events(overrides: dict) -> int:
  """= KuaiFormerConfig.num_latest_events (here without loading TensorFlow): every_event's
  targets per history, the chunk length of the point's build."""
  return overrides["max_len"] - sum(overrides["compression_windows"])


def train_point(data_dir: str, model_dir: str, overrides: dict, seed: int, budget: dict) -> dict:
  """Trains one config (in a worker process) and measures it."""
  import tensorflow as tf

  from tfkf import evaluate, train
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained
  tf.keras.backend.clear_session()
  start = time.perf_counter()
  overrides = {**overrides, "training_targets": budget["training_targets"]}
  validation = budget["validation_examples"]
  history = train.train(train.parse_args([
      f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--preset=small",
      f"--config_overrides={json.dumps(overrides)}", f"--epochs={budget['epochs']}",
      f"--steps_per_epoch={budget['steps_per_epoch']}", f"--batch_size={budget['batch_size']}",
      f"--targets_per_batch={budget['targets_per_batch']}",
      f"--max_train_seconds={budget['train_seconds']}",
      *([f"--validation_steps={-(-validation // budget['batch_size'])}"] if validation else []),
      f"--seed={seed}", "--patience=1000000", "--verbose=0"]))
  train_s = time.perf_counter() - start
  best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
  model = load_trained(model_dir, Catalog.load(data_dir))
  c = model.config
  ranking = evaluate.evaluate(evaluate.model_scorer(model), data_dir, "test", c.max_len,
                              c.event_features, max_examples=budget["eval_examples"])
  tower = model.user_tower
  backbone = [*tower.blocks, tower.query_tokens, tower.final_norm]
  backbone += [tower.compressor] if tower.compressor is not None else []
  shutil.rmtree(model_dir, ignore_errors=True)
  # The kept weights are those of the lowest validation loss (EarlyStopping restores them).
  return {"val_in_batch_accuracy": history["val_in_batch_accuracy"][best],
          "val_loss": history["val_loss"][best], "train_s": train_s,
          "steps": len(history["val_loss"]) * budget["steps_per_epoch"],
          **{f"hr@{k}": ranking[f"hr@{k}"] for k in HR_CUTOFFS}, "test_examples": ranking["examples"],
          "params_total": int(model.count_params()),
          "params_transformer": int(sum(layer.count_params() for layer in backbone)),
          "sequence_tokens": c.num_sequence_tokens}


def _cost(overrides: dict) -> int:
  """Rough relative training cost, to start the longest jobs first."""
  return overrides["max_len"] * (overrides["num_layers"] + 1)


def run(args) -> dict:
  every_event = args.training_targets == "every_event"
  budget = {"epochs": UNLIMITED_EPOCHS if args.train_seconds else args.epochs,
            "steps_per_epoch": args.steps, "batch_size": args.batch_size,
            "train_seconds": args.train_seconds, "training_targets": args.training_targets,
            "targets_per_batch": args.targets_per_batch,
            "validation_examples": args.validation_examples, "eval_examples": args.eval_examples}
  axes = points(args)
  unique = {json.dumps(o, sort_keys=True): o for axis in axes.values() for o in axis.values()}
  chunk_len = lambda key: latest_events(unique[key]) if every_event else 0
  datasets, jobs = {}, []
  for name in args.datasets:
    start = time.perf_counter()
    data_dirs = {n: build_data(name, args, n) for n in sorted({chunk_len(k) for k in unique})}
    # The summary's data: the per-target build (its splits are every build's valid and test).
    data_dir = build_data(name, args)
    with open(os.path.join(data_dir, "metadata.json")) as f:
      meta = json.load(f)
    datasets[name] = {"build_or_cache_s": time.perf_counter() - start, "data_dir": data_dir,
                      "items": meta["counts"]["items"], "splits": meta["splits"],
                      "build_flags": meta["flags"],
                      "train_builds": {str(n): d for n, d in data_dirs.items()}}
    jobs += [(name, key, seed, data_dirs[chunk_len(key)]) for key in unique for seed in args.seeds]
  jobs.sort(key=lambda j: -_cost(unique[j[1]]))
  spawn = multiprocessing.get_context("spawn")  # fresh TensorFlow per worker, not a fork
  with (tempfile.TemporaryDirectory(prefix="bench-ablation-") as work,
        concurrent.futures.ProcessPoolExecutor(args.parallel, mp_context=spawn) as pool):
    futures = {pool.submit(train_point, data_dir, os.path.join(work, f"run{i}"), unique[key],
                           seed, budget): (name, key, seed)
               for i, (name, key, seed, data_dir) in enumerate(jobs)}
    measured = {}
    for future in concurrent.futures.as_completed(futures):
      measured[futures[future]] = future.result()
      print(f"{len(measured)}/{len(jobs)} {futures[future]}", flush=True)
  for name, d in datasets.items():
    d["axes"] = {axis: {value: _summary([measured[(name, json.dumps(o, sort_keys=True), s)]
                                         for s in args.seeds], o)
                        for value, o in values.items()}
                 for axis, values in axes.items()}
  return {"seeds": args.seeds, "preset": "small", "budget": budget, "datasets": datasets,
          "paper": PAPER, "data_seed": args.data_seed,
          "versions": common.versions("tensorflow", "tf-keras", "tensorflow-recommenders",
                                      "apache-beam")}


def _summary(runs: list, overrides: dict) -> dict:
  """Per-seed lists, their medians, and what does not depend on the seed."""
  out = {"config": overrides, **{k: runs[0][k] for k in
                                 ("params_total", "params_transformer", "sequence_tokens")}}
  for metric in ("val_in_batch_accuracy", "val_loss", "train_s", "steps",
                 *(f"hr@{k}" for k in HR_CUTOFFS)):
    values = [r[metric] for r in runs]
    out[metric] = values
    out[f"median_{metric}"] = statistics.median(values)
  return out


def _ints(text: str) -> list:
  return [int(v) for v in text.split(",") if v]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", type=lambda s: s.split(","), default=["ml", "games"],
                 help=f"of {sorted(quality.DATASETS)}, movielens, synthetic")
  p.add_argument("--max_lens", type=_ints, default=[8, 16, 32, 64, 128, 256])
  p.add_argument("--query_tokens", type=_ints, default=[1, 2, 3, 4, 5, 6, 7])
  p.add_argument("--layers", type=_ints, default=[1, 2, 3, 4, 5])
  p.add_argument("--compressed_len", type=int, default=256, help="0: no compression pair")
  p.add_argument("--compression_windows", type=_ints, default=list(PAPER_WINDOWS))
  p.add_argument("--base_len", type=int, default=64)
  p.add_argument("--base_layers", type=int, default=2)
  p.add_argument("--base_query_tokens", type=int, default=4)
  p.add_argument("--seeds", type=_ints, default=[0])
  p.add_argument("--training_targets", choices=["every_event", "last"], default="every_event")
  p.add_argument("--targets_per_batch", type=int, default=2048, help="every_event")
  p.add_argument("--train_seconds", type=float, default=0,
                 help="wall-clock budget per point (0: --epochs x --steps)")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--steps", type=int, default=100, help="steps per epoch")
  p.add_argument("--batch_size", type=int, default=64,
                 help="validation batches (in-batch accuracy); last: training batches too")
  p.add_argument("--validation_examples", type=int, default=0,
                 help="valid examples per validation (0: the whole split)")
  p.add_argument("--eval_examples", type=int, default=None, help="cap on test examples ranked")
  p.add_argument("--parallel", type=int, default=2, help="worker processes")
  p.add_argument("--movielens_ratings", default=os.path.join(ML_DIR, "ratings.csv"))
  p.add_argument("--movielens_movies", default=os.path.join(ML_DIR, "movies.csv"))
  p.add_argument("--users", type=int, default=2000, help="synthetic")
  p.add_argument("--items", type=int, default=10000, help="synthetic")
  p.add_argument("--min_events", type=int, default=60, help="synthetic")
  p.add_argument("--max_events", type=int, default=400, help="synthetic")
  p.add_argument("--max_examples_per_user", type=int, default=50, help="synthetic build")
  p.add_argument("--data_seed", type=int, default=7)
  p.add_argument("--build_len", type=int, default=256, help="history length stored by the builds")
  p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "tfkf-bench-cache"))
  p.add_argument("--compare_to", default=None,
                 help="an earlier ablation.json: write a budget check beside its points")
  p.add_argument("--output", default=None,
                 help="default: benchmarks/results/ablation.json (ablation_budget.json with --compare_to)")
  args = p.parse_args(argv)
  result = run(args)
  if args.compare_to:
    with open(args.compare_to) as f:
      result["compared_to"] = earlier_points(json.load(f), result)
  print(common.write("ablation_budget" if args.compare_to else "ablation", result, args.output))


def earlier_points(earlier: dict, result: dict) -> dict:
  """The earlier run's budget and its median in-batch accuracy at the points run here."""
  def accuracy(name, axis, value):
    try:
      return earlier["datasets"][name]["axes"][axis][value]["median_val_in_batch_accuracy"]
    except KeyError:
      raise SystemExit(f"--compare_to has no {name} point {axis}={value}: run the check on "
                       "points of the earlier grid") from None
  return {"budget": earlier["budget"], "date": earlier["date"],
          "datasets": {name: {axis: {value: accuracy(name, axis, value) for value in values}
                              for axis, values in d["axes"].items()}
                       for name, d in result["datasets"].items()}}


if __name__ == "__main__":
  main()
