"""Checks an exported version against the in-process Keras model before it is published.

The reference is exact maxsim over the whole catalog, computed from the Keras
towers on the Beam job's own (already encoded) histories; the export sees the
same histories as raw id strings and must get from them to the same top K:
identical for a brute-force index (up to the order of items whose exact scores tie
within float rounding: the graph and eager Keras may sum in another order), recall@K
>= a threshold for ScaNN. An item-index export gets the Keras interests beside the
raw ids; a user-tower export must give the Keras interests.
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


# Exact maxsim scores closer than this are ties: either order is the same top K.
SCORE_TIE_TOLERANCE = 1e-5


def reference_interests(model: KuaiFormer, indices: np.ndarray) -> tf.Tensor:
  """[b, k, d] from the Keras user tower, event features unknown (as an ids-only request)."""
  inputs = {features.HISTORY_ITEM: tf.constant(indices)}
  for name in model.config.event_features:
    inputs[features.history_key(name)] = tf.zeros_like(inputs[features.HISTORY_ITEM])
  return model.user_tower(inputs)


def reference_scores(model: KuaiFormer, indices: np.ndarray, exclude_history: bool) -> np.ndarray:
  """[b, num_items] exact maxsim from the Keras model (event features unknown), catalog
  rows in order; history items at -inf when excluded."""
  items = model.item_embeddings()[features.NUM_RESERVED_IDS:]
  scores, _ = scoring.maxsim(reference_interests(model, indices), items)
  if exclude_history:
    rows = tf.constant(indices - features.NUM_RESERVED_IDS)
    scores = scoring.mask_items(scores, rows, rows >= 0)
  return scores.numpy()


def run_signature(export_path: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The SavedModel's serving_default on `feeds`, loaded as TF Serving loads it: into a graph
  and session of their own, closed after. (tf.saved_model.load in eager mode keeps every
  loaded version's variables for the life of the process: 3.3 GB per export of a 10M-item
  user tower, which an online trainer exports every micro-batch.)"""
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
    meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], export_path)
    signature = meta.signature_def["serving_default"]
    fetches = {name: info.name for name, info in signature.outputs.items()}
    return session.run(fetches, {signature.inputs[name].name: value for name, value in feeds.items()})


def served_top_k(export_path: str, servable: str, model: KuaiFormer, catalog: Catalog,
                 indices: np.ndarray) -> Dict[str, np.ndarray]:
  """The export's serving_default on the histories: a retriever takes the raw ids; an item
  index takes them with the Keras user tower's interests."""
  feeds = {"item_ids": raw_histories(indices, catalog)}
  if servable == "item_index":
    feeds["interests"] = reference_interests(model, indices).numpy()
  return run_signature(export_path, feeds)


def compare_interests(export_path: str, model: KuaiFormer, catalog: Catalog,
                      indices: np.ndarray) -> Dict[str, float]:
  """{"examples", "max_abs_difference"} of a user-tower export's interests against Keras'."""
  served = run_signature(export_path, {"item_ids": raw_histories(indices, catalog)})["interests"]
  difference = np.abs(served - reference_interests(model, indices).numpy()).max()
  return {"examples": len(indices), "max_abs_difference": float(difference)}


def compare(export_path: str, model: KuaiFormer, catalog: Catalog, indices: np.ndarray,
            top_k: int, exclude_history: bool, servable: str = "retriever") -> Dict[str, float]:
  """{"examples", "recall@K", "identical_rows", "identical_rows_up_to_ties"} of the
  export's serving_default (a retriever or an item index) against the reference."""
  served = served_top_k(export_path, servable, model, catalog, indices)
  row_of = {item.encode(): row for row, item in enumerate(catalog.item_ids[features.NUM_RESERVED_IDS:])}
  served_rows = np.vectorize(row_of.__getitem__, otypes=[np.int64])(served["item_ids"])
  scores = reference_scores(model, indices, exclude_history)
  expected_rows = np.argsort(-scores, axis=1, kind="stable")[:, :served_rows.shape[1]]
  recall: List[float] = [len(set(s) & set(e)) / len(e) for s, e in zip(served_rows, expected_rows)]
  exact = (served_rows == expected_rows).all(axis=1)
  # A swap between tied items leaves the reference scores of the served list unchanged.
  served_scores = np.take_along_axis(scores, served_rows, axis=1)
  expected_scores = np.take_along_axis(scores, expected_rows, axis=1)
  tied = np.isclose(served_scores, expected_scores, rtol=0, atol=SCORE_TIE_TOLERANCE).all(axis=1)
  return {"examples": len(indices), f"recall@{top_k}": float(np.mean(recall)),
          "identical_rows": float(np.mean(exact)),
          "identical_rows_up_to_ties": float(np.mean(exact | tied))}
