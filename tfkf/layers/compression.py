"""Adaptive item compression: old events pooled window by window (paper §3.3)."""

from typing import Sequence, Tuple

import tensorflow as tf

from tfkf.layers.transformer import TransformerBlock, padding_mask


@tf.keras.utils.register_keras_serializable(package="tfkf")
class GroupCompressor(tf.keras.layers.Layer):
  """Pools each window of the oldest events to one token with ONE shared block.

  The block is single-layer and bidirectional (no causal mask); each window's
  output is the masked mean over its real events. A window that holds only
  padding becomes an invalid (masked) token, never a zero vector that
  attention could see.

  tokens [b, sum(windows), d], valid [b, sum(windows)] ->
  (compressed [b, len(windows), d], compressed_valid [b, len(windows)]).
  """

  def __init__(self, windows: Sequence[int], num_heads: int, ffn_dim: int,
               dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.windows = tuple(windows)
    self.num_heads = num_heads
    self.ffn_dim = ffn_dim
    self.dropout = dropout

  def build(self, input_shape):
    self.block = TransformerBlock(self.num_heads, self.ffn_dim, self.dropout, name="shared_block")

  def _runs(self) -> Sequence[Tuple[int, int, int]]:
    """(start, window size, count) for each run of equal consecutive windows."""
    runs, start = [], 0
    for w in self.windows:
      if runs and runs[-1][1] == w:
        runs[-1][2] += 1
      else:
        runs.append([start, w, 1])
      start += w
    return runs

  def call(self, tokens, valid, training=False):
    d = tokens.shape[-1]
    pooled, pooled_valid = [], []
    for start, size, count in self._runs():
      # Equal windows run as one batch of [b * count, size, d] through the block.
      x = tf.reshape(tokens[:, start:start + size * count], [-1, size, d])
      v = tf.reshape(valid[:, start:start + size * count], [-1, size])
      y = self.block(x, attention_mask=padding_mask(v), training=training)
      w = tf.cast(v, y.dtype)[..., None]
      n = tf.reduce_sum(w, axis=1)
      mean = tf.reduce_sum(y * w, axis=1) / tf.maximum(n, 1.0)
      pooled.append(tf.reshape(mean, [-1, count, d]))
      pooled_valid.append(tf.reshape(n[:, 0] > 0, [-1, count]))
    return tf.concat(pooled, axis=1), tf.concat(pooled_valid, axis=1)

  def get_config(self):
    return {**super().get_config(), "windows": self.windows, "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim, "dropout": self.dropout}
