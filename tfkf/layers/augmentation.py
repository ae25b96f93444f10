"""History augmentation while training: events replaced by random items (CL4SRec-style noise)."""

import tensorflow as tf

from tfkf import features


@tf.keras.utils.register_keras_serializable(package="tfkf")
class EventSubstitution(tf.keras.layers.Layer):
  """History item ids [b, T] -> the same with each real event, at `rate`, a uniform random item.

  Only the model's input is changed while training (padding and the reserved ids
  stay); the targets are read from the unchanged history, so a substituted event
  still has to be predicted as itself.
  """

  def __init__(self, rate: float, num_items: int, **kwargs):
    super().__init__(**kwargs)
    self.rate = rate
    self.num_items = num_items

  def call(self, items, training=False):
    if not training or not self.rate:
      return items
    real = items >= features.NUM_RESERVED_IDS
    swap = tf.logical_and(real, tf.random.uniform(tf.shape(items)) < self.rate)
    random_items = tf.random.uniform(tf.shape(items), features.NUM_RESERVED_IDS, self.num_items,
                                     dtype=items.dtype)
    return tf.where(swap, random_items, items)

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "num_items": self.num_items}
