"""Lazy Adam: Adam whose sparse (embedding-row) updates touch only the rows of the batch."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfkf")
class LazyAdam(tf.keras.optimizers.Adam):
  """Adam, but a row of an embedding table moves only in the steps whose batch holds it.

  Keras's Adam decays every row's moments at every step and moves every row by m / sqrt(v):
  a tail item that one batch touched keeps moving for tens of steps on that one gradient, by
  about 3 learning rates a step at first (its v is that single gradient's, its m one tenth of
  it), so its embedding follows whichever user chose it last. Lazy Adam (TensorFlow Addons'
  LazyAdam, Adam's sparse form in TF1 embedding code) updates the batch's rows once, from
  their own moments. Dense gradients get Adam's update unchanged.
  """

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
             / (1 - tf.pow(beta_1, step)))
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    key = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[key], self._velocities[key]
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
