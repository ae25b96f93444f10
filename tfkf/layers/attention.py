"""Multi-head self-attention with rotary position embeddings (RoPE)."""

import numpy as np
import tensorflow as tf

NEG_INF = -1e9  # Finite, so a row whose keys are all masked stays NaN-free.


def rotary(x: tf.Tensor, positions: tf.Tensor = None, base: float = 10000.0) -> tf.Tensor:
  """Applies RoPE along axis -2, rotating dims (0, 1), (2, 3), ... as pairs.

  x: [batch, heads, T, head_dim]; positions [T] (default 0..T-1).
  """
  t, dim = tf.shape(x)[-2], x.shape[-1]
  if positions is None:
    positions = tf.range(t)
  inv_freq = 1.0 / (base ** (tf.range(0, dim, 2, dtype=tf.float32) / dim))
  angles = tf.cast(positions, tf.float32)[:, None] * inv_freq[None, :]  # [T, dim/2]
  sin, cos = (tf.repeat(f(angles), 2, axis=-1) for f in (tf.sin, tf.cos))  # [T, dim]
  # Each pair (a, b) turned to (-b, a) by a 2-D matmul: on CPU the strided slices of the
  # pairs (and their gradients) took 4x as long, 15% of a training step. (A batched matmul
  # broadcasting the [dim, dim] matrix corrupted memory in oneDNN at head_dim 16.)
  quarter_turn = tf.constant(np.kron(np.eye(dim // 2), [[0, 1], [-1, 0]]), x.dtype)
  turned = tf.reshape(tf.matmul(tf.reshape(x, [-1, dim]), quarter_turn), tf.shape(x))
  return x * cos + turned * sin


@tf.keras.utils.register_keras_serializable(package="tfkf")
class RotaryMultiHeadAttention(tf.keras.layers.Layer):
  """x [batch, T, d], attention_mask [batch, T, T] (True = may attend) -> [batch, T, d].

  `positions` [T] are the RoPE positions of the T tokens (default 0..T-1).
  The mask is not named `mask`: tf-keras reserves that argument for its own
  [batch, T] input mask and may fill it in by itself.
  """

  def __init__(self, num_heads: int, dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.dropout = dropout

  def build(self, input_shape):
    d = input_shape[-1]
    self.head_dim = d // self.num_heads
    self.qkv = tf.keras.layers.Dense(3 * d, use_bias=False, name="qkv")
    self.out = tf.keras.layers.Dense(d, use_bias=False, name="out")
    self.attn_dropout = tf.keras.layers.Dropout(self.dropout)

  def call(self, x, attention_mask, positions=None, training=False):
    b, t = tf.shape(x)[0], tf.shape(x)[1]
    qkv = tf.reshape(self.qkv(x), [b, t, 3, self.num_heads, self.head_dim])
    q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # each [b, h, t, hd]
    q, k = rotary(q, positions), rotary(k, positions)
    logits = tf.matmul(q, k, transpose_b=True) / (self.head_dim ** 0.5)
    logits = tf.where(attention_mask[:, None, :, :], logits, NEG_INF)
    weights = self.attn_dropout(tf.nn.softmax(logits, axis=-1), training=training)
    heads = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])
    return self.out(tf.reshape(heads, [b, t, self.num_heads * self.head_dim]))

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}
