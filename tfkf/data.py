"""tf.data reader of the Beam TFRecords: padded, batched, ready for model.fit."""

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfkf import data_files, features

# Upper history lengths of the buckets `dataset(targets_per_batch=...)` batches by.
LENGTH_BUCKETS = (2, 4, 8, 16, 32, 64, 128)


def feature_spec(event_features: Sequence[str]):
  spec = {features.TARGET_ITEM: tf.io.FixedLenFeature([], tf.int64),
          features.NUM_TARGETS: tf.io.FixedLenFeature([], tf.int64, features.ALL_TARGETS),
          features.HISTORY_ITEM: tf.io.RaggedFeature(tf.int64)}
  for name in event_features:
    spec[features.history_key(name)] = tf.io.RaggedFeature(tf.int64)
  return spec


def _history_keys(event_features: Sequence[str]):
  return [features.HISTORY_ITEM] + [features.history_key(n) for n in event_features]


def left_aligned(parsed, max_len: int, event_features: Sequence[str], trim: bool = False):
  """{target_item [b], num_targets [b], history_* ragged [b, (T)]} -> histories [b, width] left-padded.

  width is max_len, or with `trim` the longest history of the batch (at most
  max_len): the columns every history would only pad are left out.
  """
  width = max_len
  if trim:
    longest = tf.cast(tf.reduce_max(parsed[features.HISTORY_ITEM].row_lengths()), tf.int64)
    width = tf.minimum(tf.maximum(longest, 1), tf.constant(max_len, tf.int64))
  out = {features.TARGET_ITEM: parsed[features.TARGET_ITEM],
         features.NUM_TARGETS: parsed[features.NUM_TARGETS]}
  for key in _history_keys(event_features):
    out[key] = features.left_align(parsed[key], width)
  return out


def parse_batch(serialized, max_len: int, event_features: Sequence[str], trim: bool = False):
  """[b] serialized examples -> {target_item [b], history_* [b, width] left-padded} (left_aligned)."""
  return left_aligned(tf.io.parse_example(serialized, feature_spec(event_features)), max_len,
                      event_features, trim)


def _files(data_dir, split, shuffle, seed):
  files = tf.data.Dataset.list_files(os.path.join(data_dir, split, "*.tfrecord"),
                                     shuffle=shuffle, seed=seed)
  return files.interleave(tf.data.TFRecordDataset, cycle_length=4,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)


def dataset(data_dir: str, split: str, batch_size: int, max_len: int,
            event_features: Sequence[str] = tuple(features.EVENT_FEATURES),
            shuffle: bool = True, repeat: bool = False, drop_remainder: bool = True,
            seed: int = None, trim: bool = False, targets_per_batch: int = 0,
            targets_per_example: int = 0, first_event_targets: bool = False,
            every: int = 1) -> tf.data.Dataset:
  """Batches of one split. drop_remainder keeps the in-batch negatives stable.

  every: only every `every`-th example of the split's order (a sample spread over it).
  trim: histories as wide as the batch's longest (`left_aligned`), not max_len.
  targets_per_batch: instead of batch_size examples, batches of histories of
  similar length (LENGTH_BUCKETS) holding about this many training targets, an
  example counting min(length, targets_per_example) (implies trim), one more in
  the buckets no longer than that with `first_event_targets` (the cut before a whole
  history's first event).
  """
  ds = _files(data_dir, split, shuffle, seed)
  if every > 1:
    ds = ds.shard(every, 0)
  if shuffle:
    ds = ds.shuffle(20_000, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if targets_per_batch:
    ds = _length_bucketed(ds, max_len, event_features, targets_per_batch,
                          targets_per_example or max_len, first_event_targets)
  else:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda s: parse_batch(s, max_len, event_features, trim),
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def split_users(data_dir: str, split: str) -> np.ndarray:
  """[examples] user ids of a split, in the order of dataset(..., shuffle=False)."""
  return _split_column(data_dir, split, features.USER_ID, tf.string, np.array([], object))


def split_targets(data_dir: str, split: str) -> np.ndarray:
  """[examples] target item ids of a split, in the order of dataset(..., shuffle=False)."""
  return _split_column(data_dir, split, features.TARGET_ITEM, tf.int64, np.array([], np.int64))


def _split_column(data_dir, split, name, dtype, empty):
  spec = {name: tf.io.FixedLenFeature([], dtype)}
  column = _files(data_dir, split, shuffle=False, seed=None).batch(4096).map(
      lambda s: tf.io.parse_example(s, spec)[name])
  return np.concatenate([b.numpy() for b in column] or [empty])


def _length_bucketed(serialized, max_len, event_features, targets_per_batch, targets_per_example,
                     first_event_targets):
  """Serialized examples -> batches of histories of similar length, about targets_per_batch targets each."""
  spec = feature_spec(event_features)
  uppers = [n for n in LENGTH_BUCKETS if n < max_len] + [max_len]
  per_example = [min(n, targets_per_example) + (first_event_targets and n <= targets_per_example)
                 for n in uppers]
  sizes = tf.constant([max(1, targets_per_batch // n) for n in per_example], tf.int64)

  def bucket(example):
    length = tf.minimum(tf.size(example[features.HISTORY_ITEM], tf.int64), max_len)
    return tf.reduce_sum(tf.cast(length > tf.constant(uppers[:-1], tf.int64), tf.int64))

  ds = serialized.map(lambda s: tf.io.parse_single_example(s, spec),
                      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.group_by_window(bucket, lambda key, window: window.ragged_batch(sizes[key]),
                          window_size_func=lambda key: sizes[key])
  return ds.map(lambda parsed: left_aligned(parsed, max_len, event_features, trim=True),
                num_parallel_calls=tf.data.AUTOTUNE)


def metadata(data_dir: str) -> dict:
  return data_files.read_metadata(data_dir)
