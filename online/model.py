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
import tensorflow as tf

from tfkf.catalog import Catalog
from tfkf.checkpoint import WEIGHTS, build_model, load_trained, read_config
from tfkf.model import KuaiFormer

SIDE_FEATURES = "item_side_features"  # non-trainable copies of the catalog: never carried over


def _relative(name: str) -> str:
  """Variable name without the numbers Keras appends to make layer names unique per
  process ("kuai_former_3/.../dense_7/kernel:0" -> "kuai_former/.../dense/kernel:0")."""
  return re.sub(r"_\d+(?=/|:)", "", name)


def grow_into(values, target) -> None:
  """Copies each source value into the target variable at the same position: equal
  shapes whole, a grown first axis (more ids) into the leading rows (the rest keep their
  initial values). values: (name, tensor or variable) pairs; names None skip the check."""
  if len(values) != len(target):
    raise ValueError(f"{len(values)} source variables but {len(target)} target variables")
  for (name, value), t in zip(values, target):
    if name is not None and _relative(name) != _relative(t.name):
      raise ValueError(f"variable order differs: {name} vs {t.name}")
    shape = tuple(value.shape)
    if shape == tuple(t.shape):
      t.assign(value)
    elif shape[1:] == tuple(t.shape[1:]) and shape[0] <= t.shape[0]:
      t[:shape[0]].assign(value)  # in place: no second copy of a catalog-sized table
    else:
      raise ValueError(f"{name or t.name}: cannot grow {shape} into {tuple(t.shape)}")


def _optimizer_key(i: int) -> str:
  """Checkpoint key of optimizer.variables[i] in tf-keras' save_weights (0: the step count)."""
  slot = "_iterations" if i == 0 else f"_variables/{i}"
  return f"optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"


def continue_model(model_dir: str, old_catalog: Catalog, catalog: Catalog,
                   learning_rate: float) -> KuaiFormer:
  """The model of `model_dir` (trained over `old_catalog`), over `catalog`, ready to fit.

  Memory: the new model with its Adam slots, the old weights without theirs, and one old
  Adam slot at a time (read from the checkpoint): at 10M items d 64, ~13 GB against the
  ~20 GB of two compiled models.
  """
  config = read_config(model_dir)
  model = build_model(config, catalog, learning_rate)  # every weight and Adam slot exists
  old = load_trained(model_dir, old_catalog)
  keep = lambda weights: [w for w in weights if SIDE_FEATURES not in w.name]  # noqa: E731
  grow_into([(w.name, w) for w in keep(old.weights)], keep(model.weights))
  del old
  reader = tf.train.load_checkpoint(os.path.join(model_dir, WEIGHTS))
  for i, variable in enumerate(model.optimizer.variables):
    grow_into([(None, reader.get_tensor(_optimizer_key(i)))], [variable])
  return model


def step_count(model: KuaiFormer) -> int:
  return int(np.asarray(model.optimizer.iterations))
