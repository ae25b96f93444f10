"""A 50-item catalog, a model on it and random histories: inputs for the model's unit tests."""

import numpy as np
import tensorflow as tf

from tfkf import features
from tfkf.catalog import Catalog
from tfkf.model import KuaiFormer

NUM_ITEMS = 50


def catalog():
  rng = np.random.default_rng(0)
  return Catalog(item_ids=np.array([""] * 2 + [str(i) for i in range(NUM_ITEMS - 2)], object),
                 tag=rng.integers(2, 6, NUM_ITEMS), author=rng.integers(2, 9, NUM_ITEMS),
                 duration=rng.integers(1, 1000, NUM_ITEMS),
                 sampling_probability=np.full(NUM_ITEMS, 1.0 / NUM_ITEMS, np.float32),
                 vocab_sizes={"item": NUM_ITEMS, "tag": 6, "author": 9})


def model_for(config):
  tf.keras.utils.set_random_seed(1)
  return KuaiFormer(config, catalog()).build_towers()


def histories(config, lengths, seed=0, width=None):
  """Left-padded random histories, one row per length."""
  rng = np.random.default_rng(seed)
  width = width or config.max_len
  out = {features.HISTORY_ITEM: np.zeros([len(lengths), width], np.int64)}
  for name in config.event_features:
    out[features.history_key(name)] = np.zeros([len(lengths), width], np.int64)
  for row, n in enumerate(lengths):
    out[features.HISTORY_ITEM][row, width - n:] = rng.integers(2, NUM_ITEMS, n)
    for name in config.event_features:
      size = features.EVENT_FEATURES[name].vocab_size
      out[features.history_key(name)][row, width - n:] = rng.integers(1, size, n)
  return out
