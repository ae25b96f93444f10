"""Multi-interest query tokens (paper §3.4)."""

import tensorflow as tf

from tfkf.layers.transformer import cut_point_mask


@tf.keras.utils.register_keras_serializable(package="tfkf")
class QueryTokens(tf.keras.layers.Layer):
  """Appends k learnable query tokens after the sequence.

  Under the backbone's causal mask, query j sees the whole sequence and the
  queries before it; their top-layer outputs are the k interests.
  tokens [b, T, d], valid [b, T] -> ([b, T + k, d], [b, T + k]).
  """

  def __init__(self, num_query_tokens: int, **kwargs):
    super().__init__(**kwargs)
    self.num_query_tokens = num_query_tokens

  def build(self, input_shape):
    self.queries = self.add_weight(name="queries", shape=(self.num_query_tokens, input_shape[-1]),
                                   initializer=tf.keras.initializers.TruncatedNormal(stddev=1.0))

  def call(self, tokens, valid):
    b = tf.shape(tokens)[0]
    q = tf.tile(self.queries[None], [b, 1, 1])
    q_valid = tf.ones([b, self.num_query_tokens], tf.bool)
    return tf.concat([tokens, q], axis=1), tf.concat([valid, q_valid], axis=1)

  def at_cut_points(self, tokens, valid, cuts):
    """The k queries after each of several cut points, for many targets in one pass.

    tokens [b, T, d], valid [b, T], cuts [C] event positions ->
    (x [b, T + C*k, d], positions [T + C*k], attention_mask [b, T + C*k, T + C*k]).
    Query j of cut c sits at RoPE position cuts[c] + 1 + j and sees what it would
    see appended after the history cut at cuts[c] (`cut_point_mask`).
    """
    b, k, c = tf.shape(tokens)[0], self.num_query_tokens, tf.shape(cuts)[0]
    queries = tf.tile(self.queries[None], [b, c, 1])                        # [b, C*k, d]
    query_positions = tf.reshape(cuts[:, None] + 1 + tf.range(k)[None, :], [-1])
    positions = tf.concat([tf.range(tf.shape(tokens)[1]), query_positions], axis=0)
    return (tf.concat([tokens, queries], axis=1), positions, cut_point_mask(valid, cuts, k))

  def get_config(self):
    return {**super().get_config(), "num_query_tokens": self.num_query_tokens}
