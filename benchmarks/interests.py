"""Multi-interest use of a trained KuaiFormer: which of its k interests does the retrieving.

For each example of a split: the interest whose maxsim wins the target, and how many items of
the served top K (history excluded) each interest contributes (DESIGN.md §1: maxsim).

  python -m benchmarks.interests --data_dir=/tmp/bq/ml/prefix \
      --model_dir=/tmp/bq/ml/runs/kuaiformer --name=ml    # -> results/interests_ml.json
"""

import argparse
import os

import numpy as np

from benchmarks import common


def measure(data_dir: str, model_dir: str, split: str, top_k: int, max_examples: int = None) -> dict:
  import tfkf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
  from tfkf import data, evaluate, features
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained

  model = load_trained(model_dir, Catalog.load(data_dir))
  items = model.item_embeddings()
  parts = []
  for batch in data.dataset(data_dir, split, 256, model.config.max_len,
                            model.config.event_features, shuffle=False, drop_remainder=False):
    parts.append(evaluate.interest_usage(model(batch), items, batch[features.HISTORY_ITEM],
                                         batch[features.TARGET_ITEM], top_k))
    if max_examples and sum(len(p["hit"]) for p in parts) >= max_examples:
      break
  joined = {key: np.concatenate([p[key] for p in parts])[:max_examples] for key in parts[0]}
  return {"split": split, "top_k": top_k, "model_dir": model_dir,
          **evaluate.summarize_interest_usage(**joined)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True, help="a build with the model's item ids")
  p.add_argument("--model_dir", required=True, help="a tfkf.train KuaiFormer --model_dir")
  p.add_argument("--name", required=True, help="the data set's name in the results")
  p.add_argument("--split", default="test")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--max_examples", type=int, default=None)
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)
  output = args.output or os.path.join(common.RESULTS, f"interests_{args.name}.json")
  command = common.command("benchmarks.interests", argv)
  result = measure(args.data_dir, args.model_dir, args.split, args.top_k, args.max_examples)
  versions = common.versions("tensorflow", "tf-keras", "numpy")
  print(common.write("interests", {"command": command, "versions": versions,
                                   "datasets": {args.name: result}}, output))


if __name__ == "__main__":
  main()
