"""Checks an exported version against the in-process Keras model before it is published.

The reference is exact maxsim over the whole catalog, computed from the Keras
towers on the Beam job's own (already encoded) histories; the export sees the
same histories as raw id strings and must get from them to the same top K:
identical for a brute-force index, recall@K >= a threshold for ScaNN.
"""

from typing import Dict, List

import numpy as np
import tensorflow as tf

from tfkf import data, features, scoring
from tfkf.catalog import Catalog
from tfkf.model import KuaiFormer


class ExportMismatch(AssertionError):
  pass


def sample_histories(data_dir: str, max_len: int, n: int, split: str = "test") -> np.ndarray:
  """[n', max_len] item indices (left-padded) of the first n examples of a split."""
  batches = data.dataset(data_dir, split, batch_size=n, max_len=max_len, event_features=(),
                         shuffle=False, drop_remainder=False)
  indices = next(iter(batches))[features.HISTORY_ITEM].numpy()
  return indices[(indices != features.PAD_ID).any(axis=1)]


def raw_histories(indices: np.ndarray, catalog: Catalog) -> np.ndarray:
  """Indices -> raw id strings as a client sends them ("" for padding)."""
  raw = catalog.item_ids[indices].astype(object)
  raw[indices == features.PAD_ID] = features.PAD_TOKEN
  return np.vectorize(lambda s: s.encode(), otypes=[object])(raw)


def reference_top_k(model: KuaiFormer, indices: np.ndarray, k: int, exclude_history: bool) -> np.ndarray:
  """[b, k] catalog rows of the exact top k from the Keras model (event features unknown)."""
  inputs = {features.HISTORY_ITEM: tf.constant(indices)}
  for name in model.config.event_features:
    inputs[features.history_key(name)] = tf.zeros_like(inputs[features.HISTORY_ITEM])
  items = model.item_embeddings()[features.NUM_RESERVED_IDS:]
  scores, _ = scoring.maxsim(model.user_tower(inputs), items)
  if exclude_history:
    rows = tf.constant(indices - features.NUM_RESERVED_IDS)
    scores = scoring.mask_items(scores, rows, rows >= 0)
  return tf.math.top_k(scores, k=min(k, int(items.shape[0]))).indices.numpy() + features.NUM_RESERVED_IDS


def compare(export_path: str, model: KuaiFormer, catalog: Catalog, indices: np.ndarray,
            top_k: int, exclude_history: bool) -> Dict[str, float]:
  """{"examples", "recall@K", "identical_rows"} of the export's serving_default against the reference."""
  loaded = tf.saved_model.load(export_path)
  served = loaded.signatures["serving_default"](item_ids=tf.constant(raw_histories(indices, catalog)))
  served_ids = served["item_ids"].numpy()
  expected_ids = np.vectorize(lambda s: s.encode(), otypes=[object])(
      catalog.item_ids[reference_top_k(model, indices, top_k, exclude_history)])
  recall: List[float] = [len(set(s) & set(e)) / len(e) for s, e in zip(served_ids, expected_ids)]
  identical = float(np.mean([(s == e).all() for s, e in zip(served_ids, expected_ids)]))
  return {"examples": len(indices), f"recall@{top_k}": float(np.mean(recall)),
          "identical_rows": identical}
