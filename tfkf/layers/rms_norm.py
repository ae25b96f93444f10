"""RMSNorm (Llama's pre-normalisation)."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfkf")
class RMSNorm(tf.keras.layers.Layer):
  """`x / rms(x) * scale` over the last axis. [..., d] -> [..., d]."""

  def __init__(self, epsilon: float = 1e-6, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

  def call(self, x):
    ms = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
    return x * tf.math.rsqrt(ms + self.epsilon) * self.scale

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}
