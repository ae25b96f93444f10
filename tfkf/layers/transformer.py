"""Llama-style transformer block and the attention masks it is used with."""

import tensorflow as tf

from tfkf.layers.attention import RotaryMultiHeadAttention
from tfkf.layers.rms_norm import RMSNorm


@tf.keras.utils.register_keras_serializable(package="tfkf")
class GatedFeedForward(tf.keras.layers.Layer):
  """SwiGLU point-wise FFN: `W2(silu(W1 x) * W3 x)`. [..., d] -> [..., d]."""

  def __init__(self, ffn_dim: int, **kwargs):
    super().__init__(**kwargs)
    self.ffn_dim = ffn_dim

  def build(self, input_shape):
    self.gate = tf.keras.layers.Dense(self.ffn_dim, use_bias=False, name="gate")
    self.up = tf.keras.layers.Dense(self.ffn_dim, use_bias=False, name="up")
    self.down = tf.keras.layers.Dense(input_shape[-1], use_bias=False, name="down")

  def call(self, x):
    return self.down(tf.nn.silu(self.gate(x)) * self.up(x))

  def get_config(self):
    return {**super().get_config(), "ffn_dim": self.ffn_dim}


@tf.keras.utils.register_keras_serializable(package="tfkf")
class TransformerBlock(tf.keras.layers.Layer):
  """Pre-RMSNorm block: x + Attn(norm(x)); x + FFN(norm(x)).

  Whether it is causal or bidirectional is decided by the attention_mask
  [batch, T, T] it is given: see `causal_mask`, `padding_mask` and
  `cut_point_mask`; `positions` [T] are the RoPE positions (default 0..T-1).
  [batch, T, d] -> [batch, T, d].
  """

  def __init__(self, num_heads: int, ffn_dim: int, dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.ffn_dim = ffn_dim
    self.dropout = dropout

  def build(self, input_shape):
    self.attn_norm = RMSNorm(name="attn_norm")
    self.attn = RotaryMultiHeadAttention(self.num_heads, self.dropout, name="attn")
    self.ffn_norm = RMSNorm(name="ffn_norm")
    self.ffn = GatedFeedForward(self.ffn_dim, name="ffn")
    self.drop = tf.keras.layers.Dropout(self.dropout)

  def call(self, x, attention_mask, positions=None, training=False):
    x = x + self.drop(self.attn(self.attn_norm(x), attention_mask, positions, training=training),
                      training=training)
    return x + self.drop(self.ffn(self.ffn_norm(x)), training=training)

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim, "dropout": self.dropout}


def padding_mask(valid: tf.Tensor) -> tf.Tensor:
  """Bidirectional: query i may attend key j iff j is valid. [b, T] -> [b, T, T]."""
  t = tf.shape(valid)[1]
  return tf.tile(valid[:, None, :], [1, t, 1])


def causal_mask(valid: tf.Tensor) -> tf.Tensor:
  """Causal: query i may attend key j iff j <= i and j is valid. [b, T] -> [b, T, T]."""
  t = tf.shape(valid)[1]
  lower = tf.cast(tf.linalg.band_part(tf.ones([t, t]), -1, 0), tf.bool)
  return tf.logical_and(lower[None], valid[:, None, :])


def cut_point_mask(valid: tf.Tensor, cuts: tf.Tensor, num_queries: int) -> tf.Tensor:
  """Events causal among themselves, then k queries per cut point (see QueryTokens.at_cut_points).

  Query j of cut c may attend event e iff e <= cuts[c] and e is valid, and query j' of the
  same cut iff j' <= j; events never attend queries, nor queries another cut's queries. So
  each cut's queries see exactly what the k queries appended after the history cut there
  would see under `causal_mask`. valid [b, T], cuts [C] -> [b, T + C*k, T + C*k].
  """
  t, c, k = tf.shape(valid)[1], tf.shape(cuts)[0], num_queries
  events = causal_mask(valid)                                               # [b, T, T]
  event_rows = tf.concat([events, tf.zeros([tf.shape(valid)[0], t, c * k], tf.bool)], axis=2)
  cut_of_query = tf.repeat(tf.range(c), k)                                  # [C*k]
  slot_of_query = tf.tile(tf.range(k), [c])                                 # [C*k]
  sees_event = tf.range(t)[None, :] <= tf.gather(cuts, cut_of_query)[:, None]         # [C*k, T]
  sees_event = tf.logical_and(sees_event[None], valid[:, None, :])                  # [b, C*k, T]
  sees_query = tf.logical_and(tf.equal(cut_of_query[:, None], cut_of_query[None, :]),
                              slot_of_query[None, :] <= slot_of_query[:, None])     # [C*k, C*k]
  sees_query = tf.tile(sees_query[None], [tf.shape(valid)[0], 1, 1])
  query_rows = tf.concat([sees_event, sees_query], axis=2)
  return tf.concat([event_rows, query_rows], axis=1)
