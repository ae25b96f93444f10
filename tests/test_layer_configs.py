"""Every tfkf layer and tower round-trips through get_config / from_config: the copy has the same
config and, given the original's weights, computes the same outputs."""

import numpy as np
import pytest
import tensorflow as tf

from tfkf import layers
from tfkf.config import PRESETS
from tfkf.model import KuaiFormer, UserTower
from tiny_model import catalog, histories

CONFIG = PRESETS["small"].replace(max_len=16, compression_windows=(4, 4, 2), dropout=0.1)


def _tokens(t=6, d=8, seed=0):
  return tf.constant(np.random.default_rng(seed).standard_normal([2, t, d]), tf.float32)


def _valid(t=6):
  return tf.constant([[False] * 2 + [True] * (t - 2), [True] * t])


def _events():
  return {"item": tf.constant([[2, 3]], tf.int64),
          **{n: tf.constant([[1, 2]], tf.int64) for n in CONFIG.item_features + CONFIG.event_features}}


def _model(config=CONFIG):
  tf.keras.utils.set_random_seed(3)
  return KuaiFormer(config, catalog()).build_towers()


CASES = {
    "RMSNorm": (lambda: layers.RMSNorm(epsilon=1e-5), lambda: (_tokens(),), {}),
    "GatedFeedForward": (lambda: layers.GatedFeedForward(12), lambda: (_tokens(),), {}),
    "RotaryMultiHeadAttention": (lambda: layers.RotaryMultiHeadAttention(2, dropout=0.2),
                                 lambda: (_tokens(),), lambda: {"attention_mask": layers.causal_mask(_valid())}),
    "TransformerBlock": (lambda: layers.TransformerBlock(2, 12, dropout=0.2), lambda: (_tokens(),),
                         lambda: {"attention_mask": layers.padding_mask(_valid())}),
    "GroupCompressor": (lambda: layers.GroupCompressor((2, 2, 1, 1), 2, 12, dropout=0.1),
                        lambda: (_tokens(), _valid()), {}),
    "QueryTokens": (lambda: layers.QueryTokens(3), lambda: (_tokens(), _valid()), {}),
    "EventSubstitution": (lambda: layers.EventSubstitution(0.5, 40, "in_batch"),
                          lambda: (tf.constant([[0, 0, 5, 7], [3, 1, 9, 2]], tf.int64),), {}),
    "ItemSideFeatures": (lambda: _model().side_features, lambda: (tf.constant([[2, 3, 4]], tf.int64),), {}),
    "TokenEmbedding": (lambda: _model().token_embedding, lambda: (_events(),), {}),
    "CandidateTower": (lambda: _model().candidate_tower, lambda: (tf.constant([2, 5, 9], tf.int64),), {}),
    "CandidateTower (dot product)": (
        lambda: _model(CONFIG.replace(normalize_embeddings=False)).candidate_tower,
        lambda: (tf.constant([2, 5, 9], tf.int64),), {}),
    "CandidateTower (no bias)": (
        lambda: _model(CONFIG.replace(candidate_bias=False)).candidate_tower,
        lambda: (tf.constant([2, 5, 9], tf.int64),), {}),
    "UserTower": (lambda: _model().user_tower, lambda: ({k: tf.constant(v) for k, v in histories(
        CONFIG, [3, 16], width=CONFIG.max_len).items()},), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_round_trips_through_its_config(name):
  make, args, kwargs = CASES[name]
  kwargs = kwargs() if callable(kwargs) else kwargs
  layer = make()
  expected = layer(*args(), **kwargs)
  config = layer.get_config()
  copy = type(layer).from_config(config)
  if isinstance(copy, layers.CandidateTower):  # its token MLP is built by the user tower's calls
    copy.token_embedding(_events())
  copy(*args(), **kwargs)  # builds it
  copy.set_weights(layer.get_weights())
  assert copy.get_config() == config
  tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                        expected, copy(*args(), **kwargs))


def test_the_user_tower_is_registered_for_keras_deserialization():
  tower = _model().user_tower
  copy = tf.keras.layers.deserialize(tf.keras.layers.serialize(tower))
  assert isinstance(copy, UserTower) and copy.config == tower.config
