"""Item and event embeddings: `t_i = MLP([x_i, f_i])` and the candidate tower."""

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from tfkf import features


@tf.keras.utils.register_keras_serializable(package="tfkf")
class ItemSideFeatures(tf.keras.layers.Layer):
  """Item id -> its catalog side features, held as non-trainable tables.

  [...] int item ids -> {"tag", "author", "duration"} of the same shape. The
  tables have `num_items` rows; the catalog's items are the first `catalog_size`
  (default all), the rest spare rows for ids still to come (Catalog.table_rows).
  """

  def __init__(self, num_items: int, tables: Dict[str, np.ndarray] = None,
               catalog_size: int = None, **kwargs):
    super().__init__(**kwargs)
    self.num_items = num_items
    self.catalog_size = num_items if catalog_size is None else catalog_size
    self._initial = tables

  def build(self, input_shape):
    self.tables = {}
    for name in ("tag", "author", "duration"):
      init = (tf.constant_initializer(self._initial[name]) if self._initial else "zeros")
      self.tables[name] = self.add_weight(
          name=name, shape=(self.num_items,), dtype=tf.int64, initializer=init, trainable=False)

  def call(self, item_ids):
    # embedding_lookup, not gather: it also reads a table split over parameter servers.
    return {name: tf.nn.embedding_lookup(table, item_ids) for name, table in self.tables.items()}

  def set_tables(self, tables: Dict[str, np.ndarray], catalog_size: int) -> None:
    """A grown catalog's tables ([num_items] each) and item count, in place."""
    if not 0 < catalog_size <= self.num_items:
      raise ValueError(f"{catalog_size} catalog items do not fit {self.num_items} table rows")
    for name, table in self.tables.items():
      table.assign(tables[name])
    self.catalog_size = catalog_size

  def get_config(self):
    return {**super().get_config(), "num_items": self.num_items, "catalog_size": self.catalog_size}


def serialize_unbuilt(layer: tf.keras.layers.Layer) -> dict:
  """A shared sublayer's config for its owner's, without the shapes it was built on: the owner
  builds it again in its own name scope (from a build_config, tf-keras would build it at once,
  outside any scope, and then again)."""
  return {k: v for k, v in tf.keras.layers.serialize(layer).items() if k != "build_config"}


def _vocab_size(name: str, vocab_sizes: Dict[str, int]) -> int:
  if name == "duration":
    return features.DURATION.vocab_size
  if name in features.EVENT_FEATURES:
    return features.EVENT_FEATURES[name].vocab_size
  return vocab_sizes[name]


@tf.keras.utils.register_keras_serializable(package="tfkf")
class TokenEmbedding(tf.keras.layers.Layer):
  """History features -> one token per event: `MLP([item_emb, side/event embs])`.

  Inputs: {"item": [b, T], "tag"/"author"/"duration": [b, T], event features:
  [b, T]} ints -> [b, T, d_model].
  """

  def __init__(self, d_model: int, feature_dim: int, vocab_sizes: Dict[str, int],
               item_features: Sequence[str], event_features: Sequence[str],
               event_feature_dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.d_model = d_model
    self.feature_dim = feature_dim
    self.vocab_sizes = dict(vocab_sizes)
    self.item_features = tuple(item_features)
    self.event_features = tuple(event_features)
    self.event_feature_dropout = event_feature_dropout

  def build(self, input_shape):
    self.item_table = tf.keras.layers.Embedding(self.vocab_sizes["item"], self.d_model, name="item")
    self.tables = {name: tf.keras.layers.Embedding(_vocab_size(name, self.vocab_sizes),
                                                   self.feature_dim, name=name)
                   for name in self.item_features + self.event_features}
    self.mlp = tf.keras.Sequential([tf.keras.layers.Dense(self.d_model, activation="gelu"),
                                    tf.keras.layers.Dense(self.d_model)], name="token_mlp")

  def call(self, inputs, training=False):
    parts = [self.item_table(inputs["item"])]
    parts += [self.tables[n](inputs[n]) for n in self.item_features]
    keep = self._keep_events(inputs["item"], training)
    parts += [self.tables[n](inputs[n] * keep) for n in self.event_features]
    return self.mlp(tf.concat(parts, axis=-1))

  def _keep_events(self, items, training):
    """1, or per example 0 ("unknown") with prob event_feature_dropout while training."""
    if not training or self.event_feature_dropout <= 0:
      return tf.ones_like(items)
    drop = tf.random.uniform([tf.shape(items)[0], 1]) < self.event_feature_dropout
    return tf.cast(tf.logical_not(drop), items.dtype)

  def get_config(self):
    return {**super().get_config(), "d_model": self.d_model, "feature_dim": self.feature_dim,
            "vocab_sizes": self.vocab_sizes, "item_features": self.item_features,
            "event_features": self.event_features,
            "event_feature_dropout": self.event_feature_dropout}


@tf.keras.utils.register_keras_serializable(package="tfkf")
class CandidateTower(tf.keras.layers.Layer):
  """Item ids [...] -> item embeddings [..., d_model], L2-normalised when `normalize`.

  The id table is the input table of `token_embedding` when tied, else its own.
  """

  def __init__(self, token_embedding: TokenEmbedding, side_features: ItemSideFeatures,
               tie_item_embeddings: bool = True, normalize: bool = True, use_bias: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    self.use_bias = use_bias
    self.token_embedding = token_embedding
    self.side_features = side_features
    self.tie_item_embeddings = tie_item_embeddings
    self.normalize = normalize

  def build(self, input_shape):
    te = self.token_embedding
    if not te.built:  # a tower made from its config alone: the tables it shares must exist first
      te.build(None)
      te.built = True
    self.item_table = (te.item_table if self.tie_item_embeddings else
                       tf.keras.layers.Embedding(te.vocab_sizes["item"], te.d_model, name="item"))
    self.project = tf.keras.layers.Dense(te.d_model, use_bias=self.use_bias, name="project")

  def call(self, item_ids):
    side = self.side_features(item_ids)
    parts = [self.item_table(item_ids)]
    parts += [self.token_embedding.tables[n](side[n]) for n in self.token_embedding.item_features]
    embeddings = self.project(tf.concat(parts, axis=-1))
    return tf.math.l2_normalize(embeddings, axis=-1) if self.normalize else embeddings

  def get_config(self):
    return {**super().get_config(), "tie_item_embeddings": self.tie_item_embeddings,
            "normalize": self.normalize, "use_bias": self.use_bias,
            "token_embedding": serialize_unbuilt(self.token_embedding),
            "side_features": serialize_unbuilt(self.side_features)}

  @classmethod
  def from_config(cls, config):
    """A tower with its own copies of the shared layers (tying to a user tower is the model's job)."""
    config = dict(config)
    return cls(tf.keras.layers.deserialize(config.pop("token_embedding")),
               tf.keras.layers.deserialize(config.pop("side_features")), **config)
