"""Ranking metrics of a trained model or a baseline, on a built split.

  python -m tfkf.evaluate --data_dir=data/ml --model_dir=runs/ml --split=valid \
      --output=results.json [--baseline=most_popular] [--protocol=full|sampled]

--protocol=full (default): every item of the catalog is scored for each example
(maxsim over the k interests for KuaiFormer; a --model_dir trained with
`tfkf.train --model=sasrec` is scored the same way with its k = 1); the rank of the target gives
HR@{10,50,100,500,1000}, NDCG@{10,100} and MRR. With --exclude_history (default)
items already in the history are removed from the ranking, as a deployed
retriever does (a target that repeats a history item then counts as a miss).

--protocol=sampled: SASRec's protocol. The target is ranked against
--num_negatives items drawn uniformly, without repeats, from the items the
example's stored history (up to the build's max_len) and target do not contain;
the draws depend only on --seed, the data and the example's position, so every
model is ranked against the same negatives. Gives HR@{1,5,10}, NDCG@10 and MRR.
Ties count against the target in both protocols.
"""

import argparse
import json

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfkf import data, features, scoring
from tfkf.baselines.item_knn import ItemKNN
from tfkf.catalog import Catalog
from tfkf.checkpoint import kind_of, load_trained

CUTOFFS = (10, 50, 100, 500, 1000)
# protocol -> (HR cutoffs, NDCG cutoffs)
PROTOCOL_CUTOFFS = {"full": (CUTOFFS, (10, 100)), "sampled": ((1, 5, 10), (10,))}


def servable(scores: tf.Tensor, history: tf.Tensor = None) -> tf.Tensor:
  """Scores [b, N] with the reserved ids and, given a history [b, T], its items at -inf."""
  reserved = tf.range(tf.shape(scores)[1]) < features.NUM_RESERVED_IDS
  scores = tf.where(reserved[None, :], -np.inf, scores)
  if history is None:
    return scores
  return scoring.mask_items(scores, history, history >= features.NUM_RESERVED_IDS)


def target_ranks(scores: tf.Tensor, history: tf.Tensor, targets: tf.Tensor,
                 exclude_history: bool) -> tf.Tensor:
  """0-based rank of each target among all real items. scores [b, N]; history [b, T]."""
  scores = servable(scores, history if exclude_history else None)
  target_score = tf.gather(scores, targets, batch_dims=1)
  # Ties count against the target, so a constant scorer gets no credit.
  return tf.reduce_sum(tf.cast(scores >= target_score[:, None], tf.int32), axis=1) - 1


def chunked_target_ranks(interests: tf.Tensor, history: tf.Tensor, targets: tf.Tensor,
                         embed_items, num_items: int, exclude_history: bool,
                         chunk: int = 1 << 16) -> tf.Tensor:
  """target_ranks of maxsim scores without the [b, N] scores or the [N, d] item embeddings:
  `embed_items(ids)` embeds `chunk` catalog rows at a time, each scored for all b examples
  (at 10M items those two take 1 GB per 6 examples and 2.6 GB). interests [b, k, d]."""
  targets = tf.cast(targets, tf.int64)
  history = tf.cast(history, tf.int64)
  target_score = tf.reduce_max(tf.einsum("bkd,bd->bk", interests, embed_items(targets)), axis=1)
  hidden = tf.logical_and(history >= features.NUM_RESERVED_IDS, exclude_history)
  ranks = tf.zeros(tf.shape(targets), tf.int32)
  for start in range(features.NUM_RESERVED_IDS, num_items, chunk):
    ranks += _ranks_in_chunk(interests, history, hidden, targets, target_score, embed_items,
                             start, min(start + chunk, num_items))
  # A history item's score is -inf: a target in the history is ranked last, as target_ranks does.
  in_history = tf.reduce_any(tf.logical_and(hidden, history == targets[:, None]), axis=1)
  return tf.where(in_history, num_items - 1, ranks)


def _ranks_in_chunk(interests, history, hidden, targets, target_score, embed_items, start, end):
  """How many items of rows [start, end), history and target aside, score >= the target: [b]."""
  ids = tf.range(start, end, dtype=tf.int64)
  scores = tf.reduce_max(tf.einsum("bkd,nd->bkn", interests, embed_items(ids)), axis=1)
  in_chunk = tf.logical_and(hidden, tf.logical_and(history >= start, history < end))
  scores = scoring.mask_items(scores, history - start, in_chunk)
  beaten = tf.logical_and(scores >= target_score[:, None], ids[None, :] != targets[:, None])
  return tf.reduce_sum(tf.cast(beaten, tf.int32), axis=1)


def model_ranks_in_chunks(model, data_dir: str, split: str, max_len: int, event_features=(),
                          exclude_history: bool = True, batch_size: int = 256,
                          max_examples: int = None, chunk: int = 1 << 16) -> np.ndarray:
  """protocol_ranks(model_scorer(model), ...)["full"] by chunked_target_ranks: for catalogs
  whose [N, d] embeddings should not be held (the online trainer's test-then-train)."""
  ranks = []
  embed = tf.function(model.candidate_tower)
  for batch in data.dataset(data_dir, split, batch_size, max_len, event_features, shuffle=False,
                            drop_remainder=False):
    ranks.append(chunked_target_ranks(
        model(batch), batch[features.HISTORY_ITEM], batch[features.TARGET_ITEM], embed,
        model.side_features.catalog_size, exclude_history, chunk).numpy())
    if max_examples and sum(map(len, ranks)) >= max_examples:
      break
  return np.concatenate(ranks)[:max_examples]


def sampled_target_ranks(scores: tf.Tensor, targets: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
  """0-based rank of each target among itself and its negatives. negatives [b, m]."""
  target_score = tf.gather(scores, targets, batch_dims=1)
  negative_scores = tf.gather(scores, negatives, batch_dims=1)
  return tf.reduce_sum(tf.cast(negative_scores >= target_score[:, None], tf.int32), axis=1)


def sampled_negatives(data_dir: str, split: str, num_negatives: int, seed: int,
                      max_examples: int = None, every: int = 1) -> np.ndarray:
  """[examples, num_negatives] item indices none of which the example's history or target holds.
  An example's draws depend on its position in the split only: those of the first
  max_examples of every `every`-th example (data.dataset's) are the full split's rows."""
  meta = data.metadata(data_dir)
  num_items = meta["vocab_sizes"]["item"]
  max_len = meta["flags"]["max_len"]  # what the build stored: the whole history we know of
  if num_items - features.NUM_RESERVED_IDS <= num_negatives + max_len:
    raise ValueError(f"{num_items} items are too few for {num_negatives} negatives")
  out = []
  for batch in data.dataset(data_dir, split, 1024, max_len, (), shuffle=False,
                            drop_remainder=False, every=every):
    for history, target in zip(batch[features.HISTORY_ITEM].numpy(), batch[features.TARGET_ITEM].numpy()):
      rng = np.random.default_rng([seed, every * len(out)])  # the same draws for every model
      touched = set(history.tolist()) | {int(target)}
      chosen = []
      while len(chosen) < num_negatives:
        for item in rng.integers(features.NUM_RESERVED_IDS, num_items, 2 * num_negatives).tolist():
          if item not in touched and len(chosen) < num_negatives:
            touched.add(item)
            chosen.append(item)
      out.append(chosen)
    if max_examples and len(out) >= max_examples:
      break
  return np.array(out[:max_examples], np.int64).reshape(-1, num_negatives)


def per_example(ranks: np.ndarray, cutoffs=CUTOFFS, ndcg_cutoffs=(10, 100)) -> dict:
  """metric -> [examples] values whose mean is the metric (hr@K: 0/1 hits)."""
  ranks = np.asarray(ranks)
  out = {"mrr": 1.0 / (ranks + 1)}
  for k in cutoffs:
    out[f"hr@{k}"] = (ranks < k).astype(np.float64)
  for k in ndcg_cutoffs:
    out[f"ndcg@{k}"] = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
  return out


def summarize(ranks: np.ndarray, cutoffs=CUTOFFS, ndcg_cutoffs=(10, 100)) -> dict:
  values = per_example(ranks, cutoffs, ndcg_cutoffs)
  return {"examples": int(len(ranks)), **{m: float(np.mean(v)) for m, v in values.items()}}


def bootstrap_interval(values: np.ndarray, users: np.ndarray, samples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> list:
  """[low, high] interval of mean(values) resampling USERS with replacement.

  values [examples]; users [examples], the example's user. Examples of one user
  are correlated (several held-out targets, one taste), so users, not examples,
  are the units drawn. A paired comparison passes the per-example difference of
  two models. The same seed draws the same users for every call.
  """
  _, user_index = np.unique(users, return_inverse=True)
  sums = np.bincount(user_index, weights=values)
  counts = np.bincount(user_index).astype(np.float64)
  rng = np.random.default_rng(seed)
  means = []
  for _ in range(samples):
    weights = np.bincount(rng.integers(0, len(sums), len(sums)), minlength=len(sums))
    means.append(weights @ sums / (weights @ counts))
  tail = (1.0 - level) / 2
  return [float(q) for q in np.quantile(means, [tail, 1.0 - tail])]


def model_scorer(model):
  items = model.item_embeddings()  # [N, d]
  def score(batch):
    return scoring.maxsim(model(batch), items)[0]
  return score


def interest_usage(interests: tf.Tensor, items: tf.Tensor, history: tf.Tensor,
                   targets: tf.Tensor, top_k: int = 100) -> dict:
  """Which of the k interests (query tokens) does the retrieving, for one batch.

  interests [b, k, d]; items [N, d]; history [b, T]; targets [b]. Returns, per
  example: "target_interest" [b] (the maxsim argmax of the target), "from_interest"
  [b, k] (items of the served top_k, history excluded, each interest contributed),
  "hit" [b] (the target is in that top_k).
  """
  scores, best = scoring.maxsim(interests, items)
  served = tf.math.top_k(servable(scores, history), top_k).indices
  k = tf.shape(interests)[1]
  from_interest = tf.math.bincount(tf.gather(best, served, batch_dims=1), minlength=k,
                                   maxlength=k, axis=-1)
  return {"target_interest": tf.gather(best, targets, batch_dims=1).numpy(),
          "from_interest": from_interest.numpy(),
          "hit": tf.reduce_any(served == tf.cast(targets, served.dtype)[:, None], axis=1).numpy()}


def summarize_interest_usage(target_interest: np.ndarray, from_interest: np.ndarray,
                             hit: np.ndarray) -> dict:
  """Shares over examples: how often each interest wins the target (all targets, and
  the hits of the top K), how many of the top K each gives (by index, and sorted from
  the user's biggest contributor down), how many interests give at least one item."""
  k = from_interest.shape[1]
  wins = lambda t: (np.bincount(t, minlength=k) / max(len(t), 1)).tolist()
  return {"k": int(k), "examples": int(len(target_interest)),
          "target_wins": wins(target_interest), "hit_target_wins": wins(target_interest[hit]),
          "top_k_from_interest": from_interest.mean(axis=0).tolist(),
          "top_k_from_interest_sorted": np.sort(from_interest, axis=1)[:, ::-1].mean(axis=0).tolist(),
          "interests_in_top_k": float((from_interest > 0).sum(axis=1).mean())}


def target_counts(data_dir: str, split: str = "train") -> np.ndarray:
  """[items] how often each item id is a target of `split` (catalog.csv's counts include the
  held-out splits' events)."""
  num_items = data.metadata(data_dir)["vocab_sizes"]["item"]
  return np.bincount(data.split_targets(data_dir, split), minlength=num_items)


def popularity_scorer(data_dir: str, split: str = "train", counts: np.ndarray = None):
  """Most popular: items by how often they are a target of `split` (never the held-out
  splits), or by `counts` (target_counts) when the caller has them already."""
  counts = target_counts(data_dir, split) if counts is None else counts
  log_count = tf.constant(np.log1p(counts.astype(np.float64)), tf.float32)
  return lambda batch: tf.tile(log_count[None], [tf.shape(batch[features.TARGET_ITEM])[0], 1])


def evaluate(score_fn, data_dir: str, split: str, max_len: int, event_features=(),
             exclude_history: bool = True, batch_size: int = 256, max_examples: int = None,
             negatives: np.ndarray = None, every: int = 1) -> dict:
  """Full-catalog metrics, or the sampled protocol's if `negatives` (sampled_negatives) is given."""
  both = evaluate_protocols(score_fn, data_dir, split, max_len, event_features, exclude_history,
                            batch_size, max_examples, negatives, every)
  return both["full"] if negatives is None else both["sampled"]


def evaluate_protocols(score_fn, data_dir: str, split: str, max_len: int, event_features=(),
                       exclude_history: bool = True, batch_size: int = 256,
                       max_examples: int = None, negatives: np.ndarray = None,
                       every: int = 1) -> dict:
  """{"full": metrics, "sampled": metrics if `negatives` is given} from one scoring pass."""
  ranks = protocol_ranks(score_fn, data_dir, split, max_len, event_features, exclude_history,
                         batch_size, max_examples, negatives, every)
  return summarize_protocols(ranks)


def summarize_protocols(ranks: dict) -> dict:
  """protocol_ranks' {protocol: ranks} -> {protocol: metrics}."""
  return {protocol: summarize(r, *PROTOCOL_CUTOFFS[protocol]) for protocol, r in ranks.items()}


def protocol_ranks(score_fn, data_dir: str, split: str, max_len: int, event_features=(),
                   exclude_history: bool = True, batch_size: int = 256,
                   max_examples: int = None, negatives: np.ndarray = None,
                   every: int = 1) -> dict:
  """{"full": [examples] 0-based target ranks, "sampled": the same if `negatives` is given},
  in the split's file order (data.split_users gives each example's user); of every
  `every`-th example only (data.dataset)."""
  full, sampled = [], []
  ds = data.dataset(data_dir, split, batch_size, max_len, event_features, shuffle=False,
                    drop_remainder=False, every=every)
  for batch in ds:
    scores, targets = score_fn(batch), batch[features.TARGET_ITEM]
    if negatives is not None:
      done = sum(map(len, sampled))
      drawn = negatives[done:done + len(targets)]  # may be fewer: drawn for max_examples only
      sampled.append(sampled_target_ranks(scores[:len(drawn)], targets[:len(drawn)],
                                          drawn).numpy())
    full.append(target_ranks(scores, batch[features.HISTORY_ITEM], targets, exclude_history).numpy())
    if max_examples and sum(map(len, full)) >= max_examples:
      break
  out = {"full": np.concatenate(full)[:max_examples]}
  if negatives is not None:
    out["sampled"] = np.concatenate(sampled)[:max_examples]
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--model_dir", help="a tfkf.train --model_dir (not needed for a baseline)")
  p.add_argument("--baseline", choices=["most_popular", "item_knn"], default=None,
                 help="item_knn is fitted on the train split of --data_dir first")
  p.add_argument("--num_neighbors", type=int, default=100, help="item_knn: neighbours kept per item")
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  p.add_argument("--max_len", type=int, default=features.MAX_LEN,
                 help="history length for baselines (models use their config)")
  p.add_argument("--exclude_history", type=lambda s: s.lower() != "false", default=True,
                 help="full protocol: remove history items from the ranking (default true)")
  p.add_argument("--protocol", choices=["full", "sampled"], default="full")
  p.add_argument("--num_negatives", type=int, default=100, help="sampled protocol")
  p.add_argument("--seed", type=int, default=0, help="sampled protocol: the negatives' seed")
  p.add_argument("--max_examples", type=int, default=None)
  p.add_argument("--output", default=None, help="write the metrics as JSON here")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  negatives = (sampled_negatives(a.data_dir, a.split, a.num_negatives, a.seed)
               if a.protocol == "sampled" else None)
  if a.baseline:
    scorer = (popularity_scorer(a.data_dir) if a.baseline == "most_popular"
              else ItemKNN.fit(a.data_dir, a.num_neighbors).scorer())
    result = evaluate(scorer, a.data_dir, a.split,
                      a.max_len, (), a.exclude_history, max_examples=a.max_examples,
                      negatives=negatives)
  else:
    model = load_trained(a.model_dir, Catalog.load(a.data_dir))
    c = model.config
    result = evaluate(model_scorer(model), a.data_dir, a.split, c.max_len, c.event_features,
                      a.exclude_history, max_examples=a.max_examples, negatives=negatives)
  result = {"split": a.split, "scorer": a.baseline or kind_of(model.config), "protocol": a.protocol,
            **({"num_negatives": a.num_negatives, "seed": a.seed} if negatives is not None else {}),
            **result}
  print(json.dumps(result, indent=2))
  if a.output:
    with tf.io.gfile.GFile(a.output, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
