"""tfkf.data: trimmed and length-bucketed batches hold exactly the examples of the split."""

import numpy as np
import pytest
import tensorflow as tf

from tfkf import data
from tfkf import features

MAX_LEN = 16


def _write_split(tmp_path, lengths):
  """One example per length: history 100*i + 1..length, target i (its identity)."""
  (tmp_path / "train").mkdir()
  with tf.io.TFRecordWriter(str(tmp_path / "train" / "part-0.tfrecord")) as writer:
    for i, n in enumerate(lengths):
      feature = {features.TARGET_ITEM: [i], features.HISTORY_ITEM: [100 * i + j for j in range(1, n + 1)]}
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          k: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for k, v in feature.items()})
      ).SerializeToString())
  return str(tmp_path)


def _expected_row(i, n, width):
  return features.left_pad_numpy([100 * i + j for j in range(1, n + 1)], MAX_LEN)[-width:]


def test_trimmed_batches_are_as_wide_as_their_longest_history(tmp_path):
  lengths = [3, 1, 7, 2, 30, 4]
  ds = data.dataset(_write_split(tmp_path, lengths), "train", 2, MAX_LEN, (), shuffle=False,
                    trim=True)
  for batch in ds:
    ids = batch[features.TARGET_ITEM].numpy()
    width = min(max(lengths[i] for i in ids), MAX_LEN)
    assert batch[features.HISTORY_ITEM].shape[1] == width
    for row, i in zip(batch[features.HISTORY_ITEM].numpy(), ids):
      np.testing.assert_array_equal(row, _expected_row(i, lengths[i], width))


@pytest.mark.parametrize("first_event_targets", [False, True])
def test_length_buckets_hold_every_example_once_and_about_the_asked_targets(tmp_path,
                                                                            first_event_targets):
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 40, 300).tolist()
  targets_per_batch, per_example = 24, 6
  ds = data.dataset(_write_split(tmp_path, lengths), "train", 999, MAX_LEN, (), shuffle=False,
                    targets_per_batch=targets_per_batch, targets_per_example=per_example,
                    first_event_targets=first_event_targets)
  seen = []
  uppers = [n for n in data.LENGTH_BUCKETS if n < MAX_LEN] + [MAX_LEN]
  for batch in ds:
    ids = batch[features.TARGET_ITEM].numpy()
    seen += ids.tolist()
    capped = [min(lengths[i], MAX_LEN) for i in ids]
    bucket = {next(u for u in uppers if n <= u) for n in capped}
    assert len(bucket) == 1, f"one batch mixes buckets {bucket}"
    upper = bucket.pop()
    # with first-event targets a short history has one more: the cut before its first event
    per_target = min(upper, per_example) + (first_event_targets and upper <= per_example)
    assert len(ids) <= max(1, targets_per_batch // per_target)
    width = batch[features.HISTORY_ITEM].shape[1]
    assert width == max(1, max(capped))
    for row, i in zip(batch[features.HISTORY_ITEM].numpy(), ids):
      np.testing.assert_array_equal(row, _expected_row(i, lengths[i], width))
  assert sorted(seen) == list(range(len(lengths)))


def test_every_nth_example_is_a_sample_spread_over_the_split_in_its_order(tmp_path):
  lengths = [1 + i % 5 for i in range(23)]
  data_dir = _write_split(tmp_path, lengths)
  [batch] = data.dataset(data_dir, "train", 100, MAX_LEN, (), shuffle=False,
                         drop_remainder=False, every=4)
  np.testing.assert_array_equal(batch[features.TARGET_ITEM].numpy(), np.arange(0, 23, 4))
  for row, i in zip(batch[features.HISTORY_ITEM].numpy(), range(0, 23, 4)):
    np.testing.assert_array_equal(row, _expected_row(i, lengths[i], MAX_LEN))
