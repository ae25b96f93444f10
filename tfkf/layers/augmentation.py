"""History augmentation while training: events replaced by random items (CL4SRec-style noise)."""

import tensorflow as tf

from tfkf import features

SOURCES = ("uniform", "in_batch")


@tf.keras.utils.register_keras_serializable(package="tfkf")
class EventSubstitution(tf.keras.layers.Layer):
  """History item ids [b, T] -> the same with each real event, at `rate`, a random item.

  `source` "uniform" draws the substitute uniformly from the catalog (mostly tail items);
  "in_batch" draws it from the batch's own real events, so substitutes follow the log's
  popularity as in-batch negatives do. Only the model's input is changed while training
  (padding and the reserved ids stay); the targets are read from the unchanged history, so
  a substituted event still has to be predicted as itself.
  """

  def __init__(self, rate: float, num_items: int, source: str = "uniform", **kwargs):
    super().__init__(**kwargs)
    if source not in SOURCES:
      raise ValueError(f"source={source!r}: one of {SOURCES}")
    self.rate = rate
    self.num_items = num_items
    self.source = source

  def call(self, items, training=False):
    if not training or not self.rate:
      return items
    real = items >= features.NUM_RESERVED_IDS
    swap = tf.logical_and(real, tf.random.uniform(tf.shape(items)) < self.rate)
    if self.source == "in_batch":
      substitutes = self._in_batch(items, real)
    else:
      substitutes = tf.random.uniform(tf.shape(items), features.NUM_RESERVED_IDS, self.num_items,
                                      dtype=items.dtype)
    return tf.where(swap, substitutes, items)

  @staticmethod
  def _in_batch(items, real):
    """[b, T] items, each drawn uniformly from the real events of `items`."""
    flat_items = tf.reshape(items, [1, -1])
    # Position of the n-th real event: where the running count of real events reaches n + 1.
    real_seen = tf.cumsum(tf.cast(tf.reshape(real, [1, -1]), tf.int32), axis=1)
    num_real = tf.maximum(real_seen[0, -1], 1)  # no real event: nothing is swapped anyway
    nth = tf.random.uniform(tf.shape(flat_items), 0, num_real, dtype=tf.int32)
    positions = tf.searchsorted(real_seen, nth + 1, side="left")
    return tf.reshape(tf.gather(flat_items[0], positions[0]), tf.shape(items))

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "num_items": self.num_items,
            "source": self.source}
