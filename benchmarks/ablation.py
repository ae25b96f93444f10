"""make bench-ablation: one config field varied at equal budget, several seeds.

Builds the planted synthetic data set once, then trains every (value, seed)
with tfkf.train (two at a time on 2 cores) and records the final validation
in-batch accuracy (the paper's offline accuracy) and loss.

  python -m benchmarks.ablation --field num_query_tokens --values 1,4 --seeds 0,1,2
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import common


def train_jobs(data_dir, work, args):
  jobs = []
  for value in args.values:
    for seed in args.seeds:
      overrides = json.dumps({args.field: value})
      model_dir = os.path.join(work, f"{args.field}-{value}-seed{seed}")
      cmd = [sys.executable, "-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
             f"--preset={args.preset}", f"--epochs={args.epochs}", f"--steps_per_epoch={args.steps}",
             f"--batch_size={args.batch_size}", f"--seed={seed}", f"--config_overrides={overrides}",
             "--patience=1000", "--verbose=2"]
      jobs.append(((value, seed), cmd))
  return jobs


def run_parallel(jobs, parallel: int):
  """{key: final fit metrics} for each (key, command), `parallel` at a time."""
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": common.ROOT}

  def train(cmd):
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    futures = {key: pool.submit(train, cmd) for key, cmd in jobs}
    return {key: f.result() for key, f in futures.items()}


def run(args) -> dict:
  work = tempfile.mkdtemp(prefix="bench-ablation-")
  log = os.path.join(work, "raw", "log.csv")
  common.timed_module("beam_pipelines.synthetic", f"--users={args.users}", "--items=3000",
                      f"--seed={args.data_seed}", f"--output={log}")
  data_dir = os.path.join(work, "data")
  common.timed_module("beam_pipelines.build", "--runner=DirectRunner", f"--input={log}",
                      "--format=kuairand", f"--item_features={os.path.join(work, 'raw', 'items.csv')}",
                      f"--output_dir={data_dir}", f"--max_len={args.max_len}")
  results = run_parallel(train_jobs(data_dir, work, args), parallel=2)
  table = {}
  for value in args.values:
    runs = [results[(value, s)] for s in args.seeds]
    accs = [r["val_in_batch_accuracy"] for r in runs]
    table[str(value)] = {"val_in_batch_accuracy": accs, "median_val_in_batch_accuracy":
                         statistics.median(accs),
                         "val_loss": [r["val_loss"] for r in runs],
                         "median_val_loss": statistics.median(r["val_loss"] for r in runs)}
  return {"field": args.field, "preset": args.preset, "seeds": args.seeds,
          "data": {"generator": "beam_pipelines.synthetic", "users": args.users,
                   "seed": args.data_seed, "max_len": args.max_len},
          "budget": {"epochs": args.epochs, "steps_per_epoch": args.steps,
                     "batch_size": args.batch_size},
          "versions": common.versions("tensorflow", "tensorflow-recommenders"), "results": table}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--field", default="num_query_tokens")
  p.add_argument("--values", type=lambda s: [json.loads(v) for v in s.split(",")], default=[1, 4])
  p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
  p.add_argument("--preset", default="small")
  p.add_argument("--users", type=int, default=2000)
  p.add_argument("--data_seed", type=int, default=7)
  p.add_argument("--max_len", type=int, default=64)
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)
  name = f"ablation_{args.field}"
  print(common.write(name, run(args), args.output))


if __name__ == "__main__":
  main()
