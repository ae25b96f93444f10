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

ResidentModel keeps the model in memory from one micro-batch to the next: the
item tables have spare rows, new ids take them, and nothing is rebuilt or read
back until the spare rows run out.
"""

import collections
import dataclasses
import gc
import os
from typing import Dict, Optional

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


class ResidentModel:
  """The newest committed generation's model and stream state, kept in memory between
  micro-batches.

  A micro-batch whose catalog fits the item tables' rows continues it in place
  (KuaiFormer.use_catalog); the first one, and one whose new ids outgrow the
  spare rows, builds it from the generation's checkpoint with `spare_rows` rows
  to spare (default 1% of the catalog, at least 1,024). At 10M items building and
  reading back cost ~30 s of each micro-batch, and each build left ~9 GB behind.
  """

  def __init__(self, learning_rate: float, spare_rows: Optional[int] = None):
    self.learning_rate = learning_rate
    self.spare_rows = spare_rows
    self.model: Optional[KuaiFormer] = None
    self.catalog: Optional[Catalog] = None  # the model's, table_rows included
    self.state = None                       # the generation's online.state.StreamState
    self.generation: Optional[int] = None   # the committed generation held
    self.in_place = False                   # the last `continued` kept the model it held

  def load(self, generation: int, path: str) -> None:
    """Holds committed generation `generation` (at `path`): its model and stream state."""
    from online.state import StreamState  # online.state holds no model: no cycle
    state = StreamState.read(path)
    self.continued(generation, path, state.catalog())
    self.committed(generation, state)

  def continued(self, generation: int, path: str, catalog: Catalog) -> KuaiFormer:
    """Generation `generation`'s model (committed at `path`) over `catalog`, the catalog it
    grew into, ready to fit."""
    held, self.generation = self.generation, None  # nothing is held until the batch commits
    if self.model is not None and held == generation:
      rows = self.model.side_features.num_items
      if catalog.num_items <= rows:
        self.catalog = dataclasses.replace(catalog, table_rows=rows)
        self.model.use_catalog(self.catalog)
        self.in_place = True
        return self.model
    self.model, self.state = None, None
    gc.collect()
    spare = self.spare_rows if self.spare_rows is not None else max(1024, catalog.num_items // 100)
    saved_rows = Catalog.load_table_rows(path)  # the checkpoint's tables: never fewer rows
    self.catalog = dataclasses.replace(catalog, table_rows=max(catalog.num_items + spare, saved_rows))
    self.model = continue_model(path, self.catalog, self.learning_rate)
    self.in_place = False
    return self.model

  def committed(self, generation: int, state) -> None:
    """The micro-batch committed generation `generation`: the model holds it, `state`
    (its online.state.StreamState) is kept beside it."""
    self.generation, self.state = generation, state

  def take_state(self, generation: int):
    """The StreamState of committed generation `generation` if it is held (and no longer
    held: the micro-batch changes it in place), else None."""
    state, self.state = self.state, None
    return state if self.generation == generation else None
