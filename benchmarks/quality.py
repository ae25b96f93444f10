"""make bench-quality: retrieval quality of KuaiFormer beside SASRec and simple baselines.

Per data set, Beam builds over the same log (identical item ids):
  prefix  one example per target (every model is evaluated on its test split, so
          all see the same examples and negatives; KuaiFormer with
          --kuaiformer_targets=last trains on it)
  chunksN --layout=chunks --chunk_len=N: one example per N training targets,
          N = KuaiFormer's uncompressed latest events (every_event training)
  users   --max_examples_per_user=1: one training example per user, SASRec's
          published per-user sample (tfkf/baselines/sasrec.py)
Trained models: KuaiFormer, SASRec (bce, as published) and SASRec (in-batch
softmax), each with the same wall-clock training budget (--train_seconds), each
with a learning curve (full-catalog HR@100 on valid examples against training
seconds). Baselines: most popular and ItemKNN. Every model is evaluated on the
test split with the full-catalog protocol and the SASRec sampled protocol (100
negatives, one seed).

  python -m benchmarks.quality --datasets=games --train_seconds=240   # -> results/quality_games.json
  python -m benchmarks.quality --input=logs/*.csv --format=kuairand --item_features=items.csv
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

SHARED = os.path.join(os.path.dirname(common.ROOT), "shared", "data")
DATASETS = {
    "games": {"title": "SASRec Amazon Games", "format": "sasrec",
              "input": os.path.join(SHARED, "sasrec_games", "Video.txt"),
              "sasrec_max_len": 50},
    "ml": {"title": "MovieLens latest-small", "format": "movielens",
           "input": os.path.join(SHARED, "movielens_latest_small", "ratings.csv"),
           "item_features": os.path.join(SHARED, "movielens_latest_small", "movies.csv"),
           # 610 users: one held-out event each is too few to separate the models.
           "build_flags": ["--split=last_events", "--holdout_events=10"],
           # SASRec's setting for MovieLens-1M.
           "sasrec_max_len": 200},
}
UNLIMITED_EPOCHS = 100000  # --max_epochs default: the wall-time budget alone stops training
# Published SASRec (Kang & McAuley 2018, Table III), sampled protocol.
ANCHORS = {"games": {"SASRec (paper)": {"hr@10": 0.7410, "ndcg@10": 0.5360}}}


def kuaiformer_config(args) -> dict:
  """--kuaiformer_preset's changes: config_overrides JSON fields."""
  return {"max_len": args.max_len, "training_targets": args.kuaiformer_targets,
          **json.loads(args.kuaiformer_overrides)}


def chunk_len(args) -> int:
  import tfkf  # noqa: F401
  from tfkf.config import PRESETS
  return PRESETS[args.kuaiformer_preset].replace(**kuaiformer_config(args)).num_latest_events


def models(args, spec) -> dict:
  """name -> (data build, tfkf.train flags)."""
  sasrec = {"max_len": spec["sasrec_max_len"]}
  every_event = args.kuaiformer_targets == "every_event"
  return {
      "kuaiformer": (f"chunks{chunk_len(args)}" if every_event else "prefix", [
          "--model=kuaiformer", f"--preset={args.kuaiformer_preset}",
          f"--config_overrides={json.dumps(kuaiformer_config(args))}",
          f"--batch_size={args.kuaiformer_batch_size}",
          f"--targets_per_batch={args.kuaiformer_targets_per_batch}",
          f"--learning_rate={args.kuaiformer_learning_rate}",
          f"--lr_schedule={args.kuaiformer_lr_schedule}",
          f"--average_weights={args.kuaiformer_average_weights}",
          *([f"--select_by={args.kuaiformer_select_by}"] if args.kuaiformer_select_by else [])]),
      "sasrec_bce": ("users", ["--model=sasrec", "--preset=paper",
                               f"--config_overrides={json.dumps({**sasrec, 'loss': 'bce'})}",
                               f"--batch_size={args.sasrec_batch_size}"]),
      "sasrec_in_batch": ("users", ["--model=sasrec", "--preset=paper",
                                    f"--config_overrides={json.dumps({**sasrec, 'loss': 'in_batch'})}",
                                    f"--batch_size={args.sasrec_batch_size}"]),
  }


def build_flags(name: str, spec) -> list:
  """Extra flags of build `name` (prefix, chunksN, users) over the data set's log."""
  if name == "users":
    return ["--max_examples_per_user=1"]
  if name.startswith("chunks"):
    return ["--layout=chunks", f"--chunk_len={name[len('chunks'):]}"]
  return []


def cached(out: str, flags) -> bool:
  """Whether `out` holds a finished build made with these flags."""
  path = os.path.join(out, "metadata.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    stored = json.load(f)["flags"]
  return all(str(stored.get(k[2:])) == v for k, v in (flag.split("=", 1) for flag in flags))


def build(spec, out: str, max_len: int, *extra: str) -> dict:
  flags = [f"--input={spec['input']}", f"--format={spec['format']}", f"--output_dir={out}",
           f"--max_len={max_len}", *spec.get("build_flags", []), *extra]
  if spec.get("item_features"):
    flags.append(f"--item_features={spec['item_features']}")
  if not cached(out, flags):  # builds are cached in --work_dir
    shutil.rmtree(out, ignore_errors=True)
    common.timed_module("beam_pipelines.build", "--runner=DirectRunner", *flags)
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  return {"dir": out, "max_len": max_len, "splits": meta["splits"], "items": meta["counts"]["items"],
          "users": meta["counts"]["users"], "events": meta["counts"]["rows_accepted"]}


def train_command(data_dir: str, model_dir: str, flags, args, curve_dir: str = None) -> list:
  """tfkf.train's arguments (after the interpreter); with curve_dir, a learning curve on the
  valid split of that build."""
  curve = ([f"--curve_data_dir={curve_dir}", f"--curve_examples={args.curve_examples}",
            f"--curve_every_seconds={args.curve_every_seconds}"] if curve_dir else [])
  if curve_dir and args.num_negatives != 100:  # tfkf.train's default left out, as below
    curve.append(f"--curve_num_negatives={args.num_negatives}")
  chosen = any(flag.startswith("--select_by=") for flag in flags)  # --kuaiformer_select_by
  if args.select_by != "val_loss" and not chosen:  # (the default is left out: earlier records' commands hold)
    curve.append(f"--select_by={args.select_by}")
  return ["-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}", *flags,
          f"--epochs={args.max_epochs}", f"--steps_per_epoch={args.steps_per_epoch}",
          f"--validation_steps={args.validation_steps}", f"--max_train_seconds={args.train_seconds}",
          "--patience=1000000", f"--seed={args.seed}", "--verbose=2", *curve]


def train(data_dir: str, model_dir: str, flags, args, curve_dir: str = None) -> dict:
  """Runs tfkf.train (train_command)."""
  cmd = [sys.executable, *train_command(data_dir, model_dir, flags, args, curve_dir)]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=common.ROOT, env=common.module_env(), capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  final = json.loads(proc.stdout.strip().splitlines()[-1])
  out = {"train_seconds": time.perf_counter() - start, "epochs": final["epochs"],
         "steps": final["epochs"] * args.steps_per_epoch, "final_loss": final["loss"],
         "final_val_loss": final.get("val_loss"),  # none when a curve metric selects
         "command": " ".join(cmd[1:])}
  if curve_dir:
    with open(os.path.join(model_dir, "learning_curve.json")) as f:
      out["learning_curve"] = json.load(f)
  return out


INTERVAL_METRICS = {"full": ("hr@10", "hr@50", "hr@100", "hr@500", "ndcg@10"),
                    "sampled": ("hr@10",)}


def evaluate_all(scorer, eval_dir, max_len, negatives, args, event_features=()):
  """(metrics per protocol, per-example target ranks per protocol) on the test split."""
  from tfkf import evaluate
  ranks = evaluate.protocol_ranks(scorer, eval_dir, "test", max_len, event_features,
                                  max_examples=args.max_examples, negatives=negatives)
  return evaluate.summarize_protocols(ranks), ranks


def add_intervals(results: dict, ranks: dict, users, args) -> dict:
  """95% bootstrap intervals (users resampled) of each model's metrics in place, and of
  KuaiFormer minus each other model, paired (the same users drawn for both)."""
  from tfkf import evaluate
  values = {name: {p: evaluate.per_example(r, *evaluate.PROTOCOL_CUTOFFS[p])
                   for p, r in by_protocol.items()} for name, by_protocol in ranks.items()}
  interval = lambda v: evaluate.bootstrap_interval(v, users, args.bootstrap_samples, args.seed)
  for name, by_protocol in values.items():
    results[name]["intervals"] = {p: {m: interval(by_protocol[p][m]) for m in INTERVAL_METRICS[p]}
                                  for p in by_protocol}
  ours = values.get("kuaiformer")
  return {other: {p: {m: {"difference": float(np.mean(ours[p][m] - theirs[p][m])),
                          "interval": interval(ours[p][m] - theirs[p][m])}
                      for m in INTERVAL_METRICS[p]} for p in theirs}
          for other, theirs in values.items() if ours and other != "kuaiformer"}


# Lower bounds of the buckets of by_target_popularity: how often a test target is a train target.
POPULARITY_BUCKETS = (0, 1, 3, 10, 30, 100)


def by_target_popularity(ranks: dict, popularity: np.ndarray) -> dict:
  """Each model's sampled HR@10 and full HR@100 over the test examples grouped by their
  target's train count (`popularity`, [examples]): where in the catalog a model wins."""
  bucket = np.searchsorted(POPULARITY_BUCKETS, popularity, side="right") - 1
  groups = [bucket == b for b in range(len(POPULARITY_BUCKETS))]
  hit_rate = lambda hits: [float(hits[g].mean()) if g.any() else None for g in groups]  # noqa: E731
  return {"lower_bounds": list(POPULARITY_BUCKETS),
          "examples": [int(g.sum()) for g in groups],
          "models": {name: {"sampled_hr@10": hit_rate(r["sampled"] < 10),
                            "hr@100": hit_rate(r["full"] < 100)}
                     for name, r in ranks.items()}}


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


TRAINING_RECORD = ("train_seconds", "epochs", "steps", "final_loss", "final_val_loss", "command",
                   "learning_curve")


def reused_record(key: str, name: str, model_dir: str, command: list, builds: dict,
                  args) -> dict:
  """The training record of `name` in --reuse_from, whose saved run is evaluated again
  instead of trained: the same tfkf.train `command` (budget, flags, run dir), the same
  builds, and the run dir still holds that run (its learning curve is the record's)."""
  previous = read_json(args.reuse_from)
  where = f"--reuse={name}: {args.reuse_from}"
  dataset = previous["datasets"].get(key)
  if not dataset or name not in dataset["models"]:
    raise SystemExit(f"{where} has no {name} run on {key}")
  record = dataset["models"][name]
  if record["command"] != " ".join(command):
    raise SystemExit(f"{where} was trained by another command:\n{record['command']}\n"
                     f"this run's:\n{' '.join(command)}")
  used = (record["train_data"], "prefix")  # its training data, and every model's test split
  if [dataset["builds"].get(data) for data in used] != [builds[data] for data in used]:
    raise SystemExit(f"{where} was measured on other builds than this run's")
  curve = os.path.join(model_dir, "learning_curve.json")
  if not os.path.exists(curve) or read_json(curve) != record["learning_curve"]:
    raise SystemExit(f"{where}: {model_dir} no longer holds that run")
  return {**{k: record[k] for k in TRAINING_RECORD},
          "reused_from": {"path": args.reuse_from, "date": previous["date"]}}


def run_dataset(key: str, args) -> dict:
  import tfkf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
  from tfkf import evaluate
  from tfkf.data import split_targets, split_users
  from tfkf.baselines.item_knn import ItemKNN
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained

  spec = DATASETS[key]
  work = os.path.join(args.work_dir, key)
  trained = {name: m for name, m in models(args, spec).items() if name in args.models}
  builds = {"prefix": build(spec, os.path.join(work, "prefix"), args.max_len)}
  for data in sorted({data for data, _ in trained.values()} - {"prefix"}):
    max_len = spec["sasrec_max_len"] if data == "users" else args.max_len
    builds[data] = build(spec, os.path.join(work, data), max_len, *build_flags(data, spec))
    with open(os.path.join(builds["prefix"]["dir"], "catalog.csv")) as a, \
         open(os.path.join(builds[data]["dir"], "catalog.csv")) as b:
      if a.read() != b.read():
        raise RuntimeError(f"the builds prefix and {data} disagree on item ids")
  prefix = builds["prefix"]
  eval_dir = prefix["dir"]
  catalog = Catalog.load(eval_dir)
  negatives = evaluate.sampled_negatives(eval_dir, "test", args.num_negatives, args.seed)
  results, ranks = {}, {}
  counts = evaluate.target_counts(eval_dir)
  metrics, ranks["most_popular"] = evaluate_all(
      evaluate.popularity_scorer(eval_dir, counts=counts), eval_dir, args.max_len, negatives, args)
  results["most_popular"] = {**metrics, "params": 0}
  start = time.perf_counter()
  knn = ItemKNN.fit(eval_dir, args.num_neighbors)
  metrics, ranks["item_knn"] = evaluate_all(knn.scorer(), eval_dir, args.max_len, negatives, args)
  results["item_knn"] = {**metrics, "train_seconds": time.perf_counter() - start, "params": 0,
                         "num_neighbors": args.num_neighbors}
  run_dir = lambda name: os.path.join(work, "runs", name)
  reused = {  # every reused run checked before any model trains
      name: reused_record(key, name, run_dir(name),
                          train_command(builds[data]["dir"], run_dir(name), flags, args,
                                        curve_dir=eval_dir), builds, args)
      for name, (data, flags) in trained.items() if name in args.reuse}
  for name, (data, flags) in trained.items():
    model_dir = run_dir(name)
    if name in reused:
      fitted = reused[name]
    else:
      shutil.rmtree(model_dir, ignore_errors=True)  # a backup/ left there would resume, not train
      fitted = train(builds[data]["dir"], model_dir, flags, args, curve_dir=eval_dir)
    model = load_trained(model_dir, catalog)
    metrics, ranks[name] = evaluate_all(evaluate.model_scorer(model), eval_dir,
                                        model.config.max_len, negatives, args,
                                        model.config.event_features)
    results[name] = {**metrics, **fitted, "train_data": data,
                     "params": int(model.count_params()),
                     "config": json.loads(model.config.to_json())}
    print(json.dumps({key: {name: {p: {k: round(v, 4) for k, v in metrics[p].items()}
                                   for p in metrics}}}), flush=True)
  users = split_users(eval_dir, "test")[:args.max_examples]
  paired = add_intervals(results, ranks, users, args)
  popularity = counts[split_targets(eval_dir, "test")[:args.max_examples]]
  return {"title": spec["title"], "format": spec["format"], "input": spec["input"],
          "split_flags": spec.get("build_flags", []), "builds": builds,
          "anchors": ANCHORS.get(key, {}), "models": results, "kuaiformer_minus": paired,
          "by_target_popularity": by_target_popularity(ranks, popularity)}


def run(args) -> dict:
  return {"seed": args.seed,
          "versions": common.versions("tensorflow", "tf-keras", "tensorflow-recommenders",
                                      "apache-beam", "numpy"),
          "protocol": {"split": "test (each user's last event, unless the data set's "
                             "split_flags say otherwise)",
                       "full": "every catalog item ranked, history items excluded",
                       "sampled": f"{args.num_negatives} negatives the example's history and "
                                  f"target do not hold, seed {args.seed}",
                       "max_examples": args.max_examples,
                       "intervals": f"95% bootstrap interval, the test users resampled "
                                    f"{args.bootstrap_samples:,} times"},
          "budget": {"train_seconds": args.train_seconds, "steps_per_epoch": args.steps_per_epoch,
                     "max_epochs": args.max_epochs,
                     "validation_steps": args.validation_steps,
                     "kuaiformer_batch_size": args.kuaiformer_batch_size,
                     "sasrec_batch_size": args.sasrec_batch_size,
                     "kuaiformer_preset": args.kuaiformer_preset,
                     "kuaiformer_overrides": json.loads(args.kuaiformer_overrides),
                     "kuaiformer_targets": args.kuaiformer_targets,
                     "kuaiformer_targets_per_batch": args.kuaiformer_targets_per_batch,
                     "kuaiformer_learning_rate": args.kuaiformer_learning_rate,
                     "kuaiformer_lr_schedule": args.kuaiformer_lr_schedule,
                     "kuaiformer_average_weights": args.kuaiformer_average_weights,
                     "curve_examples": args.curve_examples, "select_by": args.select_by,
                     "kuaiformer_select_by": args.kuaiformer_select_by},
          "datasets": {key: run_dataset(key, args) for key in args.datasets}}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", type=lambda s: s.split(","), default=None,
                 help=f"shared data sets among {sorted(DATASETS)} (default: all, or none with --input)")
  p.add_argument("--input", default=None, help="your own log: any glob beam_pipelines.build reads")
  p.add_argument("--format", default=None, help="with --input: its beam_pipelines.build --format")
  p.add_argument("--item_features", default=None, help="with --input: the item-feature file")
  p.add_argument("--name", default=None, help="with --input: the data set's name (default: file stem)")
  p.add_argument("--build_flag", action="append", default=[],
                 help="with --input: another beam_pipelines.build flag (e.g. --columns=...)")
  p.add_argument("--sasrec_max_len", type=int, default=50, help="with --input: SASRec's max_len")
  p.add_argument("--override_input", action="append", default=[],
                 help="KEY=PATH: another log for a shared data set (the smoke test's tiny one)")
  p.add_argument("--models", type=lambda s: s.split(","),
                 default=["kuaiformer", "sasrec_bce", "sasrec_in_batch"], help="trained models")
  p.add_argument("--reuse", type=lambda s: s.split(","), default=[],
                 help="models of --models evaluated from their saved run in --work_dir instead "
                      "of trained again (e.g. the baselines, when only KuaiFormer changed)")
  p.add_argument("--reuse_from", default=None,
                 help="with --reuse: the results JSON that recorded those runs")
  p.add_argument("--work_dir", default="/tmp/bench-quality",
                 help="builds are cached here, trained runs kept in <data set>/runs")
  p.add_argument("--max_len", type=int, default=256, help="the prefix build and KuaiFormer")
  p.add_argument("--train_seconds", type=float, default=360)
  p.add_argument("--max_epochs", type=int, default=UNLIMITED_EPOCHS,
                 help="below the default the budget is epochs (--train_seconds only caps it)")
  p.add_argument("--steps_per_epoch", type=int, default=100)
  p.add_argument("--validation_steps", type=int, default=20)
  p.add_argument("--kuaiformer_batch_size", type=int, default=256)
  p.add_argument("--kuaiformer_targets", choices=["every_event", "last"], default="every_event",
                 help="every_event: sequence-level training on the chunk build; last: the "
                      "paper's one target per example on the prefix build")
  p.add_argument("--kuaiformer_targets_per_batch", type=int, default=2048)
  p.add_argument("--kuaiformer_learning_rate", type=float, default=1e-3)
  p.add_argument("--kuaiformer_lr_schedule", choices=["constant", "warmup_cosine"],
                 default="constant", help="tfkf.train --lr_schedule of KuaiFormer")
  p.add_argument("--kuaiformer_average_weights", type=float, default=0.99,
                 help="tfkf.train --average_weights of KuaiFormer (0: the raw weights); 0.99 "
                      "chosen on Games (benchmarks/results/screens/games_weight_average_600s.json, "
                      "games_lazy_adam_600s.json)")
  p.add_argument("--sasrec_batch_size", type=int, default=128)
  p.add_argument("--kuaiformer_preset", default="cpu", help="a tfkf.config preset")
  p.add_argument("--kuaiformer_overrides", default="{}", help="JSON changes to that preset")
  p.add_argument("--curve_examples", type=int, default=2000,
                 help="valid examples per point of the learning curves")
  p.add_argument("--select_by", default="val_loss",
                 help="tfkf.train --select_by of every trained model: val_loss, or a metric of "
                      "its learning curve (valid split), e.g. hr@100 with --curve_every_seconds=0")
  p.add_argument("--kuaiformer_select_by", default="hr@500",
                 help="KuaiFormer's own tfkf.train --select_by ('' for --select_by's): hr@500 "
                      "with the cpu preset's auxiliary loss, whose validation loss no longer "
                      "tracks its retrieval metrics (tfkf/config.py PRESETS)")
  p.add_argument("--curve_every_seconds", type=float, default=60,
                 help="training seconds between points of the learning curves")
  p.add_argument("--num_neighbors", type=int, default=100)
  p.add_argument("--num_negatives", type=int, default=100)
  p.add_argument("--max_examples", type=int, default=None)
  p.add_argument("--bootstrap_samples", type=int, default=1000,
                 help="user resamples of the 95%% intervals")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)
  for item in args.override_input:
    key, path = item.split("=", 1)
    DATASETS[key]["input"] = path
  if args.input:
    if not args.format:
      p.error("--input needs --format")
    args.name = args.name or os.path.splitext(os.path.basename(args.input.replace("*", "")))[0] or "custom"
    DATASETS[args.name] = {"title": args.name, "format": args.format, "input": args.input,
                           "item_features": args.item_features, "build_flags": args.build_flag,
                           "sasrec_max_len": args.sasrec_max_len}
    args.datasets = (args.datasets or []) + [args.name]
  args.datasets = args.datasets or ["games", "ml"]
  if args.reuse and not args.reuse_from:
    p.error("--reuse needs --reuse_from")
  return args


def main(argv=None):
  args = parse_args(argv)
  # One file per invocation (quality_games.json, ...): data sets can run separately.
  output = args.output or os.path.join(common.RESULTS, f"quality_{'_'.join(args.datasets)}.json")
  command = common.command("benchmarks.quality", argv)
  print(common.write("quality", {"command": command, **run(args)}, output))


if __name__ == "__main__":
  main()
