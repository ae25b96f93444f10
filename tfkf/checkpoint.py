"""A trained model directory as tfkf.train writes it and everything else reads it back:
config.json (which model, which knobs) and weights/final.

config.json of a baseline names its kind ("model": "sasrec"); without that key
it is a KuaiFormerConfig.
"""

import json
import os

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfkf.baselines import sasrec
from tfkf.catalog import Catalog
from tfkf.config import PRESETS, KuaiFormerConfig
from tfkf.model import KuaiFormer
from tfkf.optimizers import LazyAdam

CONFIG_FILE = "config.json"
WEIGHTS = "weights/final"
KUAIFORMER = "kuaiformer"
# kind -> (presets, model class, config class)
MODELS = {KUAIFORMER: (PRESETS, KuaiFormer, KuaiFormerConfig),
          "sasrec": (sasrec.PRESETS, sasrec.SASRec, sasrec.SASRecConfig)}


def kind_of(config) -> str:
  return next(kind for kind, (_, _, cls) in MODELS.items() if isinstance(config, cls))


def config_json(config) -> str:
  """KuaiFormer's config.json stays the bare config (online.train reads it as one)."""
  kind = kind_of(config)
  if kind == KUAIFORMER:
    return config.to_json()
  return json.dumps({"model": kind, **json.loads(config.to_json())}, indent=2, sort_keys=True)


def config_from_json(text: str):
  raw = json.loads(text)
  kind = raw.pop("model", KUAIFORMER)
  return MODELS[kind][2].from_json(json.dumps(raw))


def read_config(model_dir: str):
  """The config of a model directory (a KuaiFormerConfig, or a baseline's)."""
  with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as f:
    return config_from_json(f.read())


def build_model(config, catalog: Catalog, learning_rate: float):
  model = MODELS[kind_of(config)][1](config, catalog).build_towers()
  # SASRec's reference setting is beta_2 = 0.98; KuaiFormer keeps Adam's default.
  beta_2 = getattr(config, "adam_beta_2", 0.999)
  adam = LazyAdam if getattr(config, "lazy_adam", False) else tf.keras.optimizers.Adam
  optimizer = adam(learning_rate, beta_2=beta_2,
                   weight_decay=getattr(config, "weight_decay", 0.0) or None)
  optimizer.exclude_from_weight_decay(var_names=["scale", "bias"])
  model.compile(optimizer=optimizer)
  # Adam's slots made now, not in the first step: a tf.function that creates variables is
  # traced twice, and tracing a training step costs seconds.
  model.optimizer.build(model.trainable_variables)
  return model


def load_trained(model_dir: str, catalog: Catalog):
  """The trained model of --model_dir (any kind) over `catalog` (Catalog.load of its data_dir)."""
  config = read_config(model_dir)
  model = MODELS[kind_of(config)][1](config, catalog).build_towers()
  model.load_weights(os.path.join(model_dir, WEIGHTS)).assert_existing_objects_matched().expect_partial()
  return model
