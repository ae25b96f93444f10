"""tf.data reader of the Beam TFRecords: padded, batched, ready for model.fit."""

import json
import os
from typing import Sequence

import tensorflow as tf

from tfkf import features


def feature_spec(event_features: Sequence[str]):
  spec = {features.TARGET_ITEM: tf.io.FixedLenFeature([], tf.int64),
          features.HISTORY_ITEM: tf.io.RaggedFeature(tf.int64)}
  for name in event_features:
    spec[features.history_key(name)] = tf.io.RaggedFeature(tf.int64)
  return spec


def parse_batch(serialized, max_len: int, event_features: Sequence[str]):
  """[b] serialized examples -> {target_item [b], history_* [b, max_len] left-padded}."""
  parsed = tf.io.parse_example(serialized, feature_spec(event_features))
  out = {features.TARGET_ITEM: parsed[features.TARGET_ITEM]}
  for key in [features.HISTORY_ITEM] + [features.history_key(n) for n in event_features]:
    out[key] = features.left_align(parsed[key], max_len)
  return out


def dataset(data_dir: str, split: str, batch_size: int, max_len: int,
            event_features: Sequence[str] = tuple(features.EVENT_FEATURES),
            shuffle: bool = True, repeat: bool = False, drop_remainder: bool = True,
            seed: int = None) -> tf.data.Dataset:
  """Batches of one split. drop_remainder keeps the in-batch negatives stable."""
  files = tf.data.Dataset.list_files(os.path.join(data_dir, split, "*.tfrecord"),
                                     shuffle=shuffle, seed=seed)
  ds = files.interleave(tf.data.TFRecordDataset, cycle_length=4,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
  if shuffle:
    ds = ds.shuffle(20_000, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(lambda s: parse_batch(s, max_len, event_features), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def metadata(data_dir: str) -> dict:
  with tf.io.gfile.GFile(os.path.join(data_dir, "metadata.json")) as f:
    return json.load(f)
