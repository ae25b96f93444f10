"""Maxsim scoring over a catalog (paper §3.5), shared by evaluation and brute-force serving."""

import tensorflow as tf


def maxsim(interests: tf.Tensor, items: tf.Tensor):
  """Score of item x = max_j <u_j, x>. interests [b, k, d], items [N, d] ->
  (scores [b, N], index of the best interest [b, N] int32)."""
  per_interest = tf.einsum("bkd,nd->bkn", interests, items)
  return tf.reduce_max(per_interest, axis=1), tf.argmax(per_interest, axis=1, output_type=tf.int32)


def mask_items(scores: tf.Tensor, item_rows: tf.Tensor, keep: tf.Tensor,
               value: float = float("-inf")) -> tf.Tensor:
  """Sets scores[b, item_rows[b, t]] = value wherever keep[b, t]. scores [b, N]; item_rows [b, T]."""
  cells = tf.where(keep)  # [m, 2] (row, slot)
  cells = tf.stack([cells[:, 0], tf.cast(tf.gather_nd(item_rows, cells), tf.int64)], axis=1)
  return tf.tensor_scatter_nd_update(scores, cells, tf.fill([tf.shape(cells)[0]], value))
