"""Continues a trained KuaiFormer over a catalog that has grown: old rows kept, new rows fresh.

Vocabulary growth appends ids, so every item-, tag- and author-indexed table
of the new model starts with the old table's rows; the rows of new ids are
initialised as the layer initialises them. The Adam state (step count, first
and second moments) is carried over the same way, so training continues rather
than restarts. The catalog's side-feature tables and sampling probabilities
come from the new catalog.

Only the new model is built: each old value is read from the checkpoint by its
key and copied in place, one at a time. At 10M items (d 64) the compiled model
is ~8 GB; building the old one beside it as well did not fit in 24 GB.
"""

import collections
import os
from typing import Dict

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from tfkf.catalog import Catalog
from tfkf.checkpoint import WEIGHTS, build_model, read_config
from tfkf.model import KuaiFormer

SIDE_FEATURES = "item_side_features"  # non-trainable copies of the catalog: never carried over


def checkpoint_keys(model: tf.keras.Model) -> Dict[int, str]:
  """id(variable) -> the variable's key in `model.save_weights`' checkpoint: the path of
  tracked names from the model (breadth first: the shortest, as TensorFlow names it)."""
  view = tf.train.TrackableView(model)
  keys, seen, queue = {}, set(), collections.deque([(model, "")])
  while queue:
    obj, path = queue.popleft()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, tf.Variable):
      keys[id(obj)] = f"{path}/.ATTRIBUTES/VARIABLE_VALUE"
    for name, child in view.children(obj).items():
      queue.append((child, f"{path}/{name}" if path else name))
  return keys


def grow_into(value, variable: tf.Variable) -> None:
  """Copies `value` into `variable`: equal shapes whole, a grown first axis (more ids) into
  the leading rows in place (the rest keep their initial values)."""
  shape = tuple(value.shape)
  if shape == tuple(variable.shape):
    variable.assign(value)
  elif shape[1:] == tuple(variable.shape[1:]) and shape[0] <= variable.shape[0]:
    variable[:shape[0]].assign(value)
  else:
    raise ValueError(f"{variable.name}: cannot grow {shape} into {tuple(variable.shape)}")


def continue_model(model_dir: str, catalog: Catalog, learning_rate: float) -> KuaiFormer:
  """The model of `model_dir` (trained over a catalog that `catalog` extends), ready to fit."""
  model = build_model(read_config(model_dir), catalog, learning_rate)  # every weight and Adam slot
  path = os.path.join(model_dir, WEIGHTS)
  reader, keys = tf.train.load_checkpoint(path), checkpoint_keys(model)
  for variable in model.weights + model.optimizer.variables:
    if SIDE_FEATURES in variable.name:
      continue
    if not reader.has_tensor(keys[id(variable)]):
      raise ValueError(f"{variable.name}: no {keys[id(variable)]} in the checkpoint {path}")
    grow_into(reader.get_tensor(keys[id(variable)]), variable)
  return model


def step_count(model: KuaiFormer) -> int:
  return int(np.asarray(model.optimizer.iterations))
