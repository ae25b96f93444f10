"""The paper's smoothed in-batch softmax, its logQ correction, the mixed negatives that
can join the in-batch ones, the same-history mask that removes a user's own targets
from them, and SASRec's uniform-negative loss as an auxiliary."""

import numpy as np
import tensorflow as tf
from tensorflow_recommenders.layers.loss import MIN_FLOAT

from tfkf import features


class SmoothedInBatchSoftmax(tf.keras.losses.Loss):
  """Softmax cross-entropy with weight 1 - a on the positive and a/|B| on each negative.

  y_true: [B, C] one-hot positives; y_pred: [B, C] logits as tfrs Retrieval
  hands them over (temperature, logQ correction and accidental-hit removal
  already applied). Accidental hits arrive with a MIN_FLOAT logit: they are
  neither positives nor negatives and get no weight. alpha = 0 is plain
  softmax cross-entropy.

  The result is the mean over the global batch: each replica's examples are
  weighted 1 / (local batch x replicas) and summed, as tf.distribute expects.
  """

  def __init__(self, alpha: float = 0.1, name: str = "smoothed_in_batch_softmax", **kwargs):
    kwargs.setdefault("reduction", tf.keras.losses.Reduction.SUM)
    super().__init__(name=name, **kwargs)
    self.alpha = alpha

  def call(self, y_true, y_pred):
    y_true = tf.cast(y_true, y_pred.dtype)
    log_p = tf.nn.log_softmax(y_pred, axis=-1)
    negatives = (1.0 - y_true) * tf.cast(y_pred > MIN_FLOAT / 2, y_pred.dtype)
    batch = tf.cast(tf.shape(y_pred)[-1], y_pred.dtype)
    positive_term = tf.reduce_sum(y_true * log_p, axis=-1)
    negative_term = tf.reduce_sum(tf.math.multiply_no_nan(log_p, negatives), axis=-1)
    per_example = -(1.0 - self.alpha) * positive_term - self.alpha / batch * negative_term
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(y_pred)[0] * replicas, y_pred.dtype)
    return per_example / global_batch

  def get_config(self):
    return {**super().get_config(), "alpha": self.alpha}


def uniform_items(count, num_items: int) -> tf.Tensor:
  """[count] real item ids drawn uniformly (with replacement; the reserved ids never)."""
  return tf.random.uniform([count], features.NUM_RESERVED_IDS, num_items, dtype=tf.int64)


def with_uniform_negatives(targets: tf.Tensor, num_items: int, count: int) -> tf.Tensor:
  """Candidate ids [B + count]: the batch's targets [B], then `count` uniform_items."""
  return tf.concat([tf.cast(targets, tf.int64), uniform_items(count, num_items)], axis=0)


def mixed_sampling_probability(unigram: tf.Tensor, num_targets, count: int,
                               num_real_items: int) -> tf.Tensor:
  """logQ's sampling probability of candidates drawn as B in-batch targets (item i with
  probability unigram[i]) plus `count` uniform items: B p(i) + count / N expected draws,
  divided by B (a constant factor, which the softmax ignores)."""
  return unigram + count / (tf.cast(num_targets, unigram.dtype) * num_real_items)


def floor_unseen(probability: np.ndarray) -> np.ndarray:
  """Catalog sampling probabilities with every real item's 0 (no training target chose it;
  a held-out target can still be a candidate in validation) raised to the smallest real
  one: an unseen item counts as the rarest seen item, not as log 0. [num_items]."""
  real = probability[features.NUM_RESERVED_IDS:]
  rarest = real[real > 0].min() if (real > 0).any() else 1.0
  return np.concatenate([probability[:features.NUM_RESERVED_IDS], np.where(real > 0, real, rarest)])


def with_logq_correction(interests: tf.Tensor, candidates: tf.Tensor, probability: tf.Tensor,
                         weight: float, temperature: float):
  """(interests [n, k, d + 1], candidates [C, d + 1]) whose maxsim over temperature is the
  logit minus weight * log q: a ones column on each interest meets -weight * temperature *
  log q on each candidate. tfrs's own correction clips q at 1e-6, which the tail of a large
  log falls below, and cannot weigh it. probability q [C]."""
  ones = tf.ones_like(interests[..., :1])
  offset = -weight * temperature * tf.math.log(probability)
  return tf.concat([interests, ones], -1), tf.concat([candidates, offset[:, None]], -1)


def uniform_negative_bce(interests: tf.Tensor, positives: tf.Tensor, negatives: tf.Tensor,
                         temperature: float) -> tf.Tensor:
  """SASRec's objective on maxsim logits, mean over the global batch: -log s(pos / T) -
  mean_m log s(-neg_m / T) with each target's score against m uniformly drawn items. Uniform
  negatives teach every user that the tail of the catalog is not theirs, which in-batch
  negatives (drawn by popularity) rarely do. interests [n, k, d]; positives [n, d];
  negatives [n, m, d]."""
  pos = tf.reduce_max(tf.einsum("nkd,nd->nk", interests, positives), axis=1) / temperature
  neg = tf.reduce_max(tf.einsum("nkd,nmd->nmk", interests, negatives), axis=2) / temperature
  return tf.nn.compute_average_loss(tf.nn.softplus(-pos)
                                    + tf.reduce_mean(tf.nn.softplus(neg), axis=1))


def view_contrastive_loss(view_a: tf.Tensor, view_b: tf.Tensor, rows: tf.Tensor,
                          temperature: float) -> tf.Tensor:
  """InfoNCE between two views of the same n cut points (two passes with their own dropout
  and augmentation), mean over the global batch, both directions: view_a[i] should be
  closer to view_b[i] than to any view_b[j] of another history (a user's other cut points
  are no negatives, `same_history_mask`). The views' similarity is the mean cosine of
  their k interests, pair by pair. view_a, view_b [n, k, d]; rows [n]."""
  k = tf.cast(tf.shape(view_a)[1], view_a.dtype)
  a = tf.reshape(tf.math.l2_normalize(view_a, -1), [tf.shape(view_a)[0], -1])
  b = tf.reshape(tf.math.l2_normalize(view_b, -1), [tf.shape(view_b)[0], -1])
  logits = tf.matmul(a, b, transpose_b=True) / (k * temperature)               # [n, n]
  logits = tf.where(same_history_mask(rows), logits, MIN_FLOAT)
  labels = tf.range(tf.shape(logits)[0])
  per_pair = (tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
              + tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits)))
  return tf.nn.compute_average_loss(per_pair / 2)


def same_history_mask(rows: tf.Tensor) -> tf.Tensor:
  """tfrs Retrieval's score_mask [n, n] for targets of one pass: target j is no negative of
  target i when both come from the same history (batch row), unless j == i. A user's other
  targets are items that user chose (before or after the cut): in-batch negatives that
  are positives. rows [n] -> [n, n] bool."""
  n = tf.shape(rows)[0]
  return tf.logical_or(tf.not_equal(rows[:, None], rows[None, :]), tf.eye(n, dtype=tf.bool))
