"""The one feature-definition module: NumPy (Beam) and TF (model, serving) agree."""

import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfkf import features

values = st.lists(st.floats(min_value=-10, max_value=1e6, allow_nan=False), min_size=1, max_size=50)


def test_duration_buckets_follow_the_paper_formula():
  seconds = np.array([0.0, 0.3, 150.0, 299.9, 300.0, 5000.0])
  paper = np.minimum((np.minimum(seconds, 300) / 300 * 1000).astype(int), 999)
  np.testing.assert_array_equal(features.DURATION.to_numpy(seconds), 1 + paper)


@settings(max_examples=200, deadline=None)
@given(values)
def test_every_encoding_gives_the_same_bucket_in_numpy_and_tensorflow(xs):
  for name, encoding in features.EVENT_FEATURES.items():
    np.testing.assert_array_equal(encoding.to_numpy(xs), encoding.to_tf(tf.constant(xs)).numpy(),
                                  err_msg=name)
    assert (encoding.to_numpy(xs) >= 1).all() and (encoding.to_numpy(xs) < encoding.vocab_size).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(2, 100), max_size=12), min_size=1, max_size=5),
       st.integers(1, 8))
def test_left_align_keeps_the_latest_events_left_padded(rows, max_len):
  aligned = features.left_align(tf.ragged.constant(rows, dtype=tf.int64), max_len).numpy()
  expected = np.stack([features.left_pad_numpy(r, max_len) for r in rows])
  np.testing.assert_array_equal(aligned, expected)


def test_compression_windows_must_leave_uncompressed_events():
  assert features.uncompressed_len(256, features.COMPRESSION_WINDOWS) == 48
  try:
    features.uncompressed_len(64, (32, 32))
  except ValueError as e:
    assert "leave no uncompressed events" in str(e)
  else:
    raise AssertionError("windows covering the whole history must be rejected")
