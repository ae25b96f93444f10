"""make bench-quality: retrieval quality of KuaiFormer beside SASRec and simple baselines.

Per data set, two Beam builds over the same log (identical item ids):
  prefix  one example per target (KuaiFormer's training data; every model is
          evaluated on its test split, so all see the same examples and negatives)
  users   --max_examples_per_user=1: one training example per user, SASRec's
          published per-user sample (tfkf/baselines/sasrec.py)
Trained models: KuaiFormer, SASRec (bce, as published) and SASRec (in-batch
softmax), each with the same wall-clock training budget (--train_seconds).
Baselines: most popular and ItemKNN. Every model is evaluated on the test split
with the full-catalog protocol and the SASRec sampled protocol (100 negatives,
one seed).

  python -m benchmarks.quality --datasets=games --train_seconds=240   # -> results/quality_games.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common

SHARED = os.path.join(os.path.dirname(common.ROOT), "shared", "data")
DATASETS = {
    "games": {"title": "SASRec Amazon Games", "format": "sasrec",
              "input": os.path.join(SHARED, "sasrec_games", "Video.txt"),
              "sasrec_max_len": 50},
    "ml": {"title": "MovieLens latest-small", "format": "movielens",
           "input": os.path.join(SHARED, "movielens_latest_small", "ratings.csv"),
           "item_features": os.path.join(SHARED, "movielens_latest_small", "movies.csv"),
           # SASRec's setting for MovieLens-1M.
           "sasrec_max_len": 200},
}
UNLIMITED_EPOCHS = 100000  # --max_epochs default: the wall-time budget alone stops training
# Published SASRec (Kang & McAuley 2018, Table III), sampled protocol.
ANCHORS = {"games": {"SASRec (paper)": {"hr@10": 0.7410, "ndcg@10": 0.5360}}}


def models(args, spec) -> dict:
  """name -> (data build, tfkf.train flags)."""
  kuaiformer = {"max_len": args.max_len, **json.loads(args.kuaiformer_overrides)}
  sasrec = {"max_len": spec["sasrec_max_len"]}
  return {
      "kuaiformer": (kuaiformer_build(args), ["--model=kuaiformer", "--preset=paper",
                                f"--config_overrides={json.dumps(kuaiformer)}",
                                f"--batch_size={args.kuaiformer_batch_size}"]),
      "sasrec_bce": ("users", ["--model=sasrec", "--preset=paper",
                               f"--config_overrides={json.dumps({**sasrec, 'loss': 'bce'})}",
                               f"--batch_size={args.sasrec_batch_size}"]),
      "sasrec_in_batch": ("users", ["--model=sasrec", "--preset=paper",
                                    f"--config_overrides={json.dumps({**sasrec, 'loss': 'in_batch'})}",
                                    f"--batch_size={args.sasrec_batch_size}"]),
  }


def kuaiformer_build(args) -> str:
  """The build KuaiFormer trains on: "prefix" (every target), or every --kuaiformer_stride-th
  target per user (with training_targets=every_event, each example supervises that many)."""
  return "prefix" if args.kuaiformer_stride == 1 else f"stride{args.kuaiformer_stride}"


def build(spec, out: str, max_len: int, *extra: str) -> dict:
  if not os.path.exists(os.path.join(out, "metadata.json")):  # cached in --work_dir
    flags = [f"--input={spec['input']}", f"--format={spec['format']}", f"--output_dir={out}",
             f"--max_len={max_len}", *extra]
    if spec.get("item_features"):
      flags.append(f"--item_features={spec['item_features']}")
    common.timed_module("beam_pipelines.build", "--runner=DirectRunner", *flags)
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  return {"dir": out, "max_len": max_len, "splits": meta["splits"], "items": meta["counts"]["items"],
          "users": meta["counts"]["users"], "events": meta["counts"]["rows_accepted"]}


def train(data_dir: str, model_dir: str, flags, args) -> dict:
  cmd = [sys.executable, "-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
         *flags, f"--epochs={args.max_epochs}", f"--steps_per_epoch={args.steps_per_epoch}",
         f"--validation_steps={args.validation_steps}", f"--max_train_seconds={args.train_seconds}",
         "--patience=1000000", f"--seed={args.seed}", "--verbose=2"]
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": common.ROOT}
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  final = json.loads(proc.stdout.strip().splitlines()[-1])
  return {"train_seconds": time.perf_counter() - start, "epochs": final["epochs"],
          "steps": final["epochs"] * args.steps_per_epoch, "final_loss": final["loss"],
          "final_val_loss": final["val_loss"], "command": " ".join(cmd[1:])}


def evaluate_all(scorer, eval_dir, max_len, negatives, args, event_features=()) -> dict:
  from tfkf import evaluate
  return evaluate.evaluate_protocols(scorer, eval_dir, "test", max_len, event_features,
                                     max_examples=args.max_examples, negatives=negatives)


def run_dataset(key: str, args) -> dict:
  import tfkf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
  from tfkf import evaluate
  from tfkf.baselines.item_knn import ItemKNN
  from tfkf.catalog import Catalog
  from tfkf.train import load_trained

  spec = DATASETS[key]
  work = os.path.join(args.work_dir, key)
  trained = {name: m for name, m in models(args, spec).items() if name in args.models}
  builds = {"prefix": build(spec, os.path.join(work, "prefix"), args.max_len)}
  if args.kuaiformer_stride != 1 and "kuaiformer" in trained:
    name = kuaiformer_build(args)
    builds[name] = build(spec, os.path.join(work, name), args.max_len,
                         f"--stride={args.kuaiformer_stride}")
  if any(data == "users" for data, _ in trained.values()):
    builds["users"] = build(spec, os.path.join(work, "users"), spec["sasrec_max_len"],
                            "--max_examples_per_user=1")
    with open(os.path.join(builds["prefix"]["dir"], "catalog.csv")) as a, \
         open(os.path.join(builds["users"]["dir"], "catalog.csv")) as b:
      if a.read() != b.read():
        raise RuntimeError("the two builds disagree on item ids")
  prefix = builds["prefix"]
  eval_dir = prefix["dir"]
  catalog = Catalog.load(eval_dir)
  negatives = evaluate.sampled_negatives(eval_dir, "test", args.num_negatives, args.seed)
  results = {
      "most_popular": {**evaluate_all(evaluate.popularity_scorer(catalog), eval_dir,
                                      args.max_len, negatives, args), "params": 0},
  }
  start = time.perf_counter()
  knn = ItemKNN.fit(eval_dir, args.num_neighbors)
  results["item_knn"] = {**evaluate_all(knn.scorer(), eval_dir, args.max_len,
                                        negatives, args),
                         "train_seconds": time.perf_counter() - start, "params": 0,
                         "num_neighbors": args.num_neighbors}
  for name, (data, flags) in trained.items():
    data_dir = builds[data]["dir"]
    model_dir = os.path.join(work, "runs", name)
    fitted = train(data_dir, model_dir, flags, args)
    model = load_trained(model_dir, catalog)
    metrics = evaluate_all(evaluate.model_scorer(model), eval_dir, model.config.max_len,
                           negatives, args, model.config.event_features)
    results[name] = {**metrics, **fitted, "train_data": data,
                     "params": int(model.count_params()),
                     "config": json.loads(model.config.to_json())}
    print(json.dumps({key: {name: {p: {k: round(v, 4) for k, v in metrics[p].items()}
                                   for p in metrics}}}), flush=True)
  return {"title": spec["title"], "format": spec["format"], "input": spec["input"],
          "builds": builds, "anchors": ANCHORS.get(key, {}),
          "models": results}


def run(args) -> dict:
  return {"seed": args.seed,
          "versions": common.versions("tensorflow", "tf-keras", "tensorflow-recommenders",
                                      "apache-beam", "numpy"),
          "protocol": {"split": "test (leave-one-out: each user's last event)",
                       "full": "every catalog item ranked, history items excluded",
                       "sampled": f"{args.num_negatives} negatives the example's history and "
                                  f"target do not hold, seed {args.seed}",
                       "max_examples": args.max_examples},
          "budget": {"train_seconds": args.train_seconds, "steps_per_epoch": args.steps_per_epoch,
                     "max_epochs": args.max_epochs,
                     "validation_steps": args.validation_steps,
                     "kuaiformer_batch_size": args.kuaiformer_batch_size,
                     "sasrec_batch_size": args.sasrec_batch_size,
                     "kuaiformer_overrides": json.loads(args.kuaiformer_overrides),
                     "kuaiformer_stride": args.kuaiformer_stride},
          "datasets": {key: run_dataset(key, args) for key in args.datasets}}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", type=lambda s: s.split(","), default=["games", "ml"])
  p.add_argument("--models", type=lambda s: s.split(","),
                 default=["kuaiformer", "sasrec_bce", "sasrec_in_batch"], help="trained models")
  p.add_argument("--input", action="append", default=[],
                 help="KEY=PATH: another log for a data set (the smoke test's tiny one)")
  p.add_argument("--work_dir", default="/tmp/bench-quality", help="builds are cached here")
  p.add_argument("--max_len", type=int, default=256, help="the prefix build and KuaiFormer")
  p.add_argument("--train_seconds", type=float, default=360)
  p.add_argument("--max_epochs", type=int, default=UNLIMITED_EPOCHS,
                 help="below the default the budget is epochs (--train_seconds only caps it)")
  p.add_argument("--steps_per_epoch", type=int, default=100)
  p.add_argument("--validation_steps", type=int, default=20)
  p.add_argument("--kuaiformer_batch_size", type=int, default=256)
  p.add_argument("--sasrec_batch_size", type=int, default=128)
  p.add_argument("--kuaiformer_overrides", default=json.dumps(
      {"d_model": 64, "num_heads": 2, "num_layers": 2, "ffn_dim": 256}),
      help="JSON changes to the paper preset (CPU sizing)")
  p.add_argument("--kuaiformer_stride", type=int, default=1,
                 help="train KuaiFormer on every n-th target per user (the build's --stride)")
  p.add_argument("--num_neighbors", type=int, default=100)
  p.add_argument("--num_negatives", type=int, default=100)
  p.add_argument("--max_examples", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)
  for item in args.input:
    key, path = item.split("=", 1)
    DATASETS[key]["input"] = path
  return args


def main(argv=None):
  args = parse_args(argv)
  # One file per invocation (quality_games.json, ...): data sets can run separately.
  output = args.output or os.path.join(common.RESULTS, f"quality_{'_'.join(args.datasets)}.json")
  command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
  print(common.write("quality", {"command": command, **run(args)}, output))


if __name__ == "__main__":
  main()
