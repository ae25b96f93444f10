"""Screens training variants on one build: same wall-clock budget, metrics on the VALID split.

Model selection reads valid, never test (the acceptance tables of bench-quality read test).
Variants run interleaved, --repeats rounds; every run's numbers are kept.

  python -m benchmarks.screen --data_dir=/tmp/bq/games/chunks48 --eval_dir=/tmp/bq/games/prefix \
      --train_seconds=120 --output=benchmarks/results/screens/games_logq.json \
      --variant='logq={"config_overrides": {"use_logq": true}}' \
      --variant='no_logq={"config_overrides": {"use_logq": false}}'

A variant is NAME=JSON of tfkf.train flags; "config_overrides" is merged over --base_overrides.
"""

import argparse
import json
import os
import statistics

from benchmarks import common
from benchmarks.quality import train


def train_flags(spec: dict, args) -> list:
  spec = dict(spec)
  overrides = {**json.loads(args.base_overrides), **spec.pop("config_overrides", {})}
  flags = {"model": "kuaiformer", "preset": "paper", "batch_size": 256, **spec,
           "config_overrides": json.dumps(overrides)}
  return [f"--{k}={v}" for k, v in flags.items()]


def valid_metrics(model_dir: str, args) -> dict:
  """{"valid": full-catalog metrics, "valid_sampled": the sampled protocol's} of a trained run;
  with --popularity_prior, "popularity_prior": {beta: the same with the scores plus beta *
  log(1 + the item's train count), in logits (the model's score over its temperature)}."""
  import tfkf  # noqa: F401
  from tfkf import evaluate
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained

  model = load_trained(model_dir, Catalog.load(args.eval_dir))
  negatives = evaluate.sampled_negatives(args.eval_dir, "valid", args.num_negatives, args.seed)

  def measure(score_fn):
    metrics = evaluate.evaluate_protocols(score_fn, args.eval_dir, "valid",
                                          model.config.max_len, model.config.event_features,
                                          max_examples=args.max_examples, negatives=negatives)
    return {"valid": metrics["full"], "valid_sampled": metrics["sampled"]}

  scorer = evaluate.model_scorer(model)
  out = measure(scorer)
  if args.popularity_prior:
    temperature = getattr(model.config, "temperature", 1.0)
    log_count = evaluate.popularity_scorer(args.eval_dir)
    out["popularity_prior"] = {
        beta: measure(lambda batch, beta=beta: scorer(batch) / temperature + beta * log_count(batch))
        for beta in args.popularity_prior}
  return out


def run_variant(name: str, spec: dict, repeat: int, args) -> dict:
  model_dir = os.path.join(args.work_dir, f"{name}-{repeat}")
  fitted = train(args.data_dir, model_dir, train_flags(spec, args), args,
                 curve_dir=args.eval_dir if args.curve_examples else None)
  metrics = valid_metrics(model_dir, args)
  print(json.dumps({name: {p: {k: round(v, 4) for k, v in m.items()} for p, m in metrics.items()},
                    "steps": fitted["steps"]}), flush=True)
  return {**fitted, **metrics, "repeat": repeat}


def summary(runs: list, protocol: str = "valid") -> dict:
  keys = runs[0][protocol].keys()
  return {k: {"median": statistics.median(r[protocol][k] for r in runs),
              "min": min(r[protocol][k] for r in runs), "max": max(r[protocol][k] for r in runs)}
          for k in keys}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True, help="the build the variants train on")
  p.add_argument("--eval_dir", required=True, help="a build with the same item ids; its valid split")
  p.add_argument("--variant", action="append", default=[], help="NAME=JSON of tfkf.train flags")
  p.add_argument("--reference", action="append", default=[],
                 help="NAME=MODEL_DIR: a run trained elsewhere (e.g. a baseline of a quality "
                      "run on the same item ids), evaluated the same way, not trained")
  p.add_argument("--base_overrides", default=json.dumps(
      {"d_model": 64, "num_heads": 2, "num_layers": 2, "ffn_dim": 256}))
  p.add_argument("--train_seconds", type=float, default=120)
  p.add_argument("--steps_per_epoch", type=int, default=50)
  p.add_argument("--max_epochs", type=int, default=100000)
  p.add_argument("--validation_steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--max_examples", type=int, default=10000)
  p.add_argument("--num_negatives", type=int, default=100,
                 help="the sampled protocol's uniformly drawn negatives per example")
  p.add_argument("--curve_examples", type=int, default=0,
                 help="a learning curve on this many valid examples (0: none)")
  p.add_argument("--curve_every_seconds", type=float, default=60,
                 help="training seconds between points of the learning curves")
  p.add_argument("--select_by", default="val_loss",
                 help="tfkf.train --select_by: val_loss, or a learning-curve metric (e.g. hr@100)")
  p.add_argument("--popularity_prior", type=lambda s: [float(b) for b in s.split(",")], default=[],
                 help="BETA,...: each run measured again with beta * log(1 + train count) added "
                      "to its logits (does it under- or over-weight popularity?)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--work_dir", default="/tmp/bench-screen")
  p.add_argument("--output", required=True)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  variants = dict(v.split("=", 1) for v in args.variant)
  variants = {name: json.loads(spec) for name, spec in variants.items()}
  references = dict(r.split("=", 1) for r in args.reference)
  if not variants and not references:
    raise SystemExit("benchmarks.screen: give a --variant to train or a --reference to evaluate")
  references = {name: {"model_dir": d, **valid_metrics(d, args)} for name, d in references.items()}
  runs = {name: [] for name in variants}
  for repeat in range(args.repeats):
    for name, spec in variants.items():
      runs[name].append(run_variant(name, spec, repeat, args))
  command = common.command("benchmarks.screen", argv)
  payload = {"command": command, "data_dir": args.data_dir, "eval_dir": args.eval_dir,
             "split": "valid", "max_examples": args.max_examples,
             "train_seconds": args.train_seconds, "select_by": args.select_by,
             "base_overrides": json.loads(args.base_overrides), "references": references,
             "variants": {name: {"spec": variants[name], "summary": summary(r),
                                 "summary_sampled": summary(r, "valid_sampled"), "runs": r}
                          for name, r in runs.items()}}
  print(common.write("screen", payload, args.output))


if __name__ == "__main__":
  main()
