"""Full-catalog ranking metrics of a trained model or a baseline, on a built split.

  python -m tfkf.evaluate --data_dir=data/ml --model_dir=runs/ml --split=valid \
      --output=results.json [--baseline=most_popular]

Every item of the catalog is scored for each example (maxsim over the k
interests for KuaiFormer); the rank of the target gives HR@K, NDCG@K and MRR.
With --exclude_history (default) items already in the history are removed
from the ranking, as a deployed retriever does (a target that repeats a
history item then counts as a miss).
"""

import argparse
import json

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfkf import data, features, scoring
from tfkf.catalog import Catalog

CUTOFFS = (10, 50, 100, 500, 1000)


def target_ranks(scores: tf.Tensor, history: tf.Tensor, targets: tf.Tensor,
                 exclude_history: bool) -> tf.Tensor:
  """0-based rank of each target among all real items. scores [b, N]; history [b, T]."""
  n = tf.shape(scores)[1]
  reserved = tf.range(n) < features.NUM_RESERVED_IDS
  scores = tf.where(reserved[None, :], -np.inf, scores)
  if exclude_history:
    scores = scoring.mask_items(scores, history, history >= features.NUM_RESERVED_IDS)
  target_score = tf.gather(scores, targets, batch_dims=1)
  # Ties count against the target, so a constant scorer gets no credit.
  return tf.reduce_sum(tf.cast(scores >= target_score[:, None], tf.int32), axis=1) - 1


def summarize(ranks: np.ndarray, cutoffs=CUTOFFS) -> dict:
  ranks = np.asarray(ranks)
  out = {"examples": int(len(ranks)), "mrr": float(np.mean(1.0 / (ranks + 1)))}
  for k in cutoffs:
    out[f"hr@{k}"] = float(np.mean(ranks < k))
  for k in (10, 100):
    out[f"ndcg@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
  return out


def model_scorer(model):
  items = model.item_embeddings()  # [N, d]
  def score(batch):
    return scoring.maxsim(model(batch), items)[0]
  return score


def popularity_scorer(catalog: Catalog):
  log_count = tf.constant(np.log(catalog.sampling_probability.astype(np.float64)), tf.float32)
  return lambda batch: tf.tile(log_count[None], [tf.shape(batch[features.TARGET_ITEM])[0], 1])


def evaluate(score_fn, data_dir: str, split: str, max_len: int, event_features=(),
             exclude_history: bool = True, batch_size: int = 256, max_examples: int = None) -> dict:
  ranks = []
  ds = data.dataset(data_dir, split, batch_size, max_len, event_features, shuffle=False,
                    drop_remainder=False)
  for batch in ds:
    ranks.append(target_ranks(score_fn(batch), batch[features.HISTORY_ITEM],
                              batch[features.TARGET_ITEM], exclude_history).numpy())
    if max_examples and sum(map(len, ranks)) >= max_examples:
      break
  ranks = np.concatenate(ranks)[:max_examples]
  return summarize(ranks)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--model_dir", help="a tfkf.train --model_dir (not needed for a baseline)")
  p.add_argument("--baseline", choices=["most_popular"], default=None)
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  p.add_argument("--max_len", type=int, default=features.MAX_LEN,
                 help="history length for baselines (models use their config)")
  p.add_argument("--exclude_history", type=lambda s: s.lower() != "false", default=True)
  p.add_argument("--max_examples", type=int, default=None)
  p.add_argument("--output", default=None, help="write the metrics as JSON here")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  if a.baseline:
    result = evaluate(popularity_scorer(Catalog.load(a.data_dir)), a.data_dir, a.split,
                      a.max_len, (), a.exclude_history, max_examples=a.max_examples)
  else:
    from tfkf.train import load_trained
    model = load_trained(a.model_dir, Catalog.load(a.data_dir))
    c = model.config
    result = evaluate(model_scorer(model), a.data_dir, a.split, c.max_len, c.event_features,
                      a.exclude_history, max_examples=a.max_examples)
  result = {"split": a.split, "scorer": a.baseline or "kuaiformer", **result}
  print(json.dumps(result, indent=2))
  if a.output:
    with tf.io.gfile.GFile(a.output, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
