"""ItemKNN: item-to-item cosine similarity over co-occurrence in training sequences.

Two items co-occur when one is a training target and the other is in that
target's history (both directions count). sim(i, j) = C_ij / sqrt(n_i n_j),
n_i the times i is a target; each item keeps its `num_neighbors` most similar
items. A user's score for item x is the sum of sim(h, x) over the history items h.
"""

import numpy as np
import tensorflow as tf

from tfkf import data, features


class ItemKNN:

  def __init__(self, neighbors: np.ndarray, weights: np.ndarray):
    """neighbors [N, M] item indices (0 = none), weights [N, M] similarities."""
    self.num_items = len(neighbors)
    self.neighbors = tf.constant(neighbors, tf.int64)
    self.weights = tf.constant(weights, tf.float32)

  @classmethod
  def fit(cls, data_dir: str, num_neighbors: int = 100, split: str = "train") -> "ItemKNN":
    meta = data.metadata(data_dir)
    n = meta["vocab_sizes"]["item"]
    pairs, targets = [], []
    for batch in data.dataset(data_dir, split, 4096, meta["flags"]["max_len"], (), shuffle=False,
                              drop_remainder=False):
      history, target = batch[features.HISTORY_ITEM].numpy(), batch[features.TARGET_ITEM].numpy()
      rows, cols = np.nonzero(history >= features.NUM_RESERVED_IDS)
      t, h = target[rows], history[rows, cols]
      keep = t != h
      pairs += [t[keep] * n + h[keep], h[keep] * n + t[keep]]
      targets.append(target)
    codes, counts = np.unique(np.concatenate(pairs), return_counts=True)
    i, j = codes // n, codes % n
    target_counts = np.bincount(np.concatenate(targets), minlength=n).astype(np.float64)
    sim = counts / np.sqrt(np.maximum(target_counts[i], 1) * np.maximum(target_counts[j], 1))
    order = np.lexsort((-sim, i))  # by item, most similar first
    i, j, sim = i[order], j[order], sim[order]
    rank = np.arange(len(i)) - np.searchsorted(i, i)  # position within the item's row
    keep = rank < num_neighbors
    neighbors = np.zeros((n, num_neighbors), np.int64)
    weights = np.zeros((n, num_neighbors), np.float32)
    neighbors[i[keep], rank[keep]] = j[keep]
    weights[i[keep], rank[keep]] = sim[keep]
    return cls(neighbors, weights)

  def scores(self, history: tf.Tensor) -> tf.Tensor:
    """[b, T] history item indices -> [b, N] scores."""
    real = tf.cast(history >= features.NUM_RESERVED_IDS, tf.float32)[:, :, None]
    neighbors = tf.gather(self.neighbors, history)            # [b, T, M]
    weights = tf.gather(self.weights, history) * real         # [b, T, M]
    b = tf.shape(history, out_type=tf.int64)[0]
    rows = tf.range(b)[:, None, None] * self.num_items + neighbors
    flat = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(rows, [-1]),
                                        b * self.num_items)
    return tf.reshape(flat, [b, self.num_items])

  def scorer(self):
    return lambda batch: self.scores(batch[features.HISTORY_ITEM])
