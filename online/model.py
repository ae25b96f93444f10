"""Continues a trained KuaiFormer over a catalog that has grown: old rows kept, new rows fresh.

Vocabulary growth appends ids, so every item-, tag- and author-indexed table
of the new model starts with the old table's rows; the rows of new ids are
initialised as the layer initialises them. The Adam state (step count, first
and second moments) is carried over the same way, so training continues rather
than restarts. The catalog's side-feature tables and sampling probabilities
come from the new catalog.
"""

import os
import re

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from tfkf.catalog import Catalog
from tfkf.checkpoint import WEIGHTS, build_model, read_config
from tfkf.model import KuaiFormer

SIDE_FEATURES = "item_side_features"  # non-trainable copies of the catalog: never carried over


def _relative(name: str) -> str:
  """Variable name without the numbers Keras appends to make layer names unique per
  process ("kuai_former_3/.../dense_7/kernel:0" -> "kuai_former/.../dense/kernel:0")."""
  return re.sub(r"_\d+(?=/|:)", "", name)


def grow_into(source, target) -> None:
  """Copies each source variable into the target variable at the same position: equal
  shapes whole, a grown first axis (more ids) into the leading rows."""
  if len(source) != len(target):
    raise ValueError(f"{len(source)} source variables but {len(target)} target variables")
  for s, t in zip(source, target):
    if _relative(s.name) != _relative(t.name):
      raise ValueError(f"variable order differs: {s.name} vs {t.name}")
    value = s.numpy()
    if value.shape == tuple(t.shape):
      t.assign(value)
    elif value.shape[1:] == tuple(t.shape[1:]) and value.shape[0] <= t.shape[0]:
      grown = t.numpy()
      grown[:value.shape[0]] = value
      t.assign(grown)
    else:
      raise ValueError(f"{s.name}: cannot grow {value.shape} into {tuple(t.shape)}")


def continue_model(model_dir: str, old_catalog: Catalog, catalog: Catalog,
                   learning_rate: float) -> KuaiFormer:
  """The model of `model_dir` (trained over `old_catalog`), over `catalog`, ready to fit."""
  config = read_config(model_dir)
  old = build_model(config, old_catalog, learning_rate)  # every weight and Adam slot exists
  old.load_weights(os.path.join(model_dir, WEIGHTS)).assert_existing_objects_matched()
  model = build_model(config, catalog, learning_rate)
  keep = lambda weights: [w for w in weights if SIDE_FEATURES not in w.name]
  grow_into(keep(old.weights), keep(model.weights))
  grow_into(old.optimizer.variables, model.optimizer.variables)
  return model


def step_count(model: KuaiFormer) -> int:
  return int(np.asarray(model.optimizer.iterations))
