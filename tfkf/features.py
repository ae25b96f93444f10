"""Feature semantics shared by the Beam job, the Keras model and the serving signature.

This module is the single source of truth for ids, buckets, padding, the
maximum history length and the compression windows. Every encoding has a
NumPy/Python form (used by Beam) and a TensorFlow form (used inside the model
and the exported graph); tests check the two agree on the same values.

Conventions:
  * Vocabulary ids (item, tag, author): 0 = padding, 1 = out-of-vocabulary,
    real values start at 2.
  * Bucket ids: 0 = padding / unknown, real buckets start at 1.
  * Histories are left-padded to `MAX_LEN`: the latest event is last.
"""

import dataclasses
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

PAD_ID = 0
OOV_ID = 1
NUM_RESERVED_IDS = 2
PAD_TOKEN = ""  # The raw item id clients pad their histories with.

MAX_LEN = 256
# Paper default: from the oldest, 2 windows of 64 and 5 of 16; the latest 48
# events stay uncompressed (2 + 5 + 48 = 55 tokens for 256 events).
COMPRESSION_WINDOWS: Tuple[int, ...] = (64, 64, 16, 16, 16, 16, 16)

SCHEMA_VERSION = 1


def uncompressed_len(max_len: int, windows: Sequence[int]) -> int:
  """Number of latest events that bypass compression."""
  tail = max_len - sum(windows)
  if tail <= 0:
    raise ValueError(
        f"compression windows {tuple(windows)} (sum {sum(windows)}) leave no "
        f"uncompressed events for max_len={max_len}")
  return tail


# Training targets per example of the build's chunk layout: the paper's latest
# events, after each of which every_event training places a cut point.
CHUNK_LEN = uncompressed_len(MAX_LEN, COMPRESSION_WINDOWS)


# Raw values travel as float32 in the serving signature. Both paths round to
# float32 first and then compute in float64, so Beam and serving agree exactly.
def _np_raw(x) -> np.ndarray:
  return np.asarray(x, np.float32).astype(np.float64)


def _tf_raw(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.cast(x, tf.float32), tf.float64)


@dataclasses.dataclass(frozen=True)
class _CappedBuckets:
  """`bucket = 1 + int(scale(min(x, cap)) * n)`, capped to n; 0 = unknown.

  Subclasses define `scale` in NumPy and TF with the same operations, so Beam
  and serving compute the same bucket.
  """
  cap: float
  num_buckets: int

  @property
  def vocab_size(self) -> int:
    return self.num_buckets + 1

  def to_numpy(self, x):
    x = np.clip(_np_raw(x), 0.0, self.cap)
    b = np.floor(self._scale_np(x) * self.num_buckets).astype(np.int64)
    return 1 + np.minimum(b, self.num_buckets - 1)

  def to_tf(self, x: tf.Tensor) -> tf.Tensor:
    x = tf.clip_by_value(_tf_raw(x), 0.0, self.cap)
    b = tf.cast(tf.math.floor(self._scale_tf(x) * self.num_buckets), tf.int64)
    return 1 + tf.minimum(b, self.num_buckets - 1)


class UniformBuckets(_CappedBuckets):
  """Uniform over [0, cap]. The paper's duration example: cap 300 s, 1000 buckets."""

  def _scale_np(self, x):
    return x / self.cap

  def _scale_tf(self, x):
    return x / self.cap


class LogBuckets(_CappedBuckets):
  """Log-uniform over [0, cap] for heavy-tailed values (watch time in seconds):
  fine resolution for short views, coarse for long ones."""

  def _scale_np(self, x):
    return np.log1p(x) / math.log1p(self.cap)

  def _scale_tf(self, x):
    return tf.math.log1p(x) / math.log1p(self.cap)


@dataclasses.dataclass(frozen=True)
class BinaryLabel:
  """A 0/1 action label: 1 = no, 2 = yes (raw value >= 0.5), 0 = unknown/padding.

  The 0.5 threshold, not 0, keeps float32 denormals (which TF flushes to zero
  on CPU) from meaning "yes" in Beam and "no" at serving.
  """

  @property
  def vocab_size(self) -> int:
    return 3

  def to_numpy(self, x):
    return 1 + (_np_raw(x) >= 0.5).astype(np.int64)

  def to_tf(self, x: tf.Tensor) -> tf.Tensor:
    return 1 + tf.cast(_tf_raw(x) >= 0.5, tf.int64)


# Item-level continuous feature, stored in the catalog.
DURATION = UniformBuckets(cap=300.0, num_buckets=1000)

# Per-event features stored in every history (name -> encoding). The raw
# value each one is computed from is named in EVENT_RAW_INPUTS.
EVENT_FEATURES: Dict[str, object] = {
    "watch_time": LogBuckets(cap=3600.0, num_buckets=64),
    "watch_ratio": UniformBuckets(cap=2.0, num_buckets=20),
    "like": BinaryLabel(),
    "follow": BinaryLabel(),
    "comment": BinaryLabel(),
    "forward": BinaryLabel(),
    "rating": UniformBuckets(cap=5.0, num_buckets=10),  # half stars
}
EVENT_RAW_INPUTS = {
    "watch_time": "watch_time_s",
    "watch_ratio": "watch_ratio",
    "like": "is_like",
    "follow": "is_follow",
    "comment": "is_comment",
    "forward": "is_forward",
    "rating": "rating",
}

# tf.train.Example feature names written by Beam and parsed by tfkf.data.
HISTORY_ITEM = "history_item"
TARGET_ITEM = "target_item"
USER_ID = "user_id"
TARGET_TIME = "target_time"
# Optional: how many of its trailing next-item targets an every_event example
# supervises (the online trainer's examples hold old events that were targets
# before). Absent: every target of its latest events.
NUM_TARGETS = "num_targets"
ALL_TARGETS = 1 << 30


def history_key(feature: str) -> str:
  return f"history_{feature}"


def left_pad_numpy(values: Sequence[int], max_len: int) -> np.ndarray:
  """Keeps the latest `max_len` values, left-padded with PAD_ID."""
  values = list(values)[-max_len:]
  out = np.full(max_len, PAD_ID, np.int64)
  if values:
    out[max_len - len(values):] = values
  return out


def left_align(ragged: tf.RaggedTensor, max_len: int, pad=PAD_ID) -> tf.Tensor:
  """[batch, (ragged)] -> [batch, max_len]: latest `max_len` values, left-padded."""
  total = tf.cast(ragged.row_lengths(), tf.int64)[:, None]
  lengths = tf.minimum(total, max_len)
  dense = ragged.to_tensor(default_value=pad)
  # One spare column so the gather below is valid even for an all-empty batch.
  dense = tf.pad(dense, [[0, 0], [0, 1]], constant_values=pad)
  positions = tf.range(max_len, dtype=tf.int64)[None, :]
  # Output slot p holds the event at index total - max_len + p when it exists.
  source = total - max_len + positions
  valid = positions >= (max_len - lengths)
  gathered = tf.gather(dense, tf.maximum(source, 0), batch_dims=1)
  return tf.where(valid, gathered, tf.constant(pad, dense.dtype))
