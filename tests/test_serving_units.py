"""Serving internals without a server: the multi-interest merge, batch merge/split, version policy,
TensorProto encoding."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.batching import merge, split
from serving.export import new_version
from serving.grpc_api import fill_tensor_proto
from serving.model_manager import ModelConfig, wanted_versions
from serving.retriever import merge_candidates


def reference_merge(scores, positions, history):
  """Per row: {item: best score} over the candidates, history items left out."""
  best = {}
  for s, p in zip(scores, positions):
    if p not in history:
      best[p] = max(best.get(p, -np.inf), s)
  return best


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(0, 5), st.randoms(use_true_random=False))
def test_merge_keeps_each_items_best_score_once_and_drops_history(batch, width, history_len, rnd):
  rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
  scores = rng.choice([0.1, 0.2, 0.5, 0.9], size=(batch, width)).astype(np.float32)  # ties on purpose
  positions = rng.integers(0, 6, size=(batch, width))
  history = np.concatenate([rng.integers(0, 6, size=(batch, history_len)),
                            np.full((batch, 1), -1)], axis=1)  # -1: padding / unknown
  interest = np.tile(np.arange(width, dtype=np.int32), (batch, 1))
  merged, merged_positions, merged_interest = [x.numpy() for x in merge_candidates(
      tf.constant(scores), tf.constant(positions), tf.constant(interest), tf.constant(history))]
  for row in range(batch):
    kept = merged[row] > -np.inf
    got = dict(zip(merged_positions[row][kept], merged[row][kept]))
    assert len(got) == kept.sum(), "an item is kept at most once"
    assert got == reference_merge(scores[row], positions[row], set(history[row]))
    for p, i in zip(merged_positions[row][kept], merged_interest[row][kept]):
      assert scores[row, i] == got[p] and positions[row, i] == p, "interest found that score"


def test_batch_merge_pads_time_and_split_restores_rows():
  a = {"item_ids": np.array([[b"1", b"2", b"3"]], object), "watch_time_s": np.ones([1, 3], np.float32)}
  b = {"item_ids": np.array([[b"4"], [b"5"]], object), "watch_time_s": np.full([2, 1], 2, np.float32)}
  merged = merge([a, b])
  assert merged["item_ids"].tolist() == [[b"1", b"2", b"3"], [b"4", b"", b""], [b"5", b"", b""]]
  assert merged["watch_time_s"].tolist() == [[1, 1, 1], [2, 0, 0], [2, 0, 0]]
  first, second = split({"scores": np.arange(3)[:, None]}, [1, 2])
  assert first["scores"].tolist() == [[0]] and second["scores"].tolist() == [[1], [2]]


def test_version_policies_follow_tf_serving():
  latest = ModelConfig(name="m", base_path="/x")
  assert wanted_versions(latest, [1, 2, 5]) == [5] and wanted_versions(latest, []) == []
  two = ModelConfig(name="m", base_path="/x")
  two.model_version_policy.latest.num_versions = 2
  assert wanted_versions(two, [1, 2, 5]) == [2, 5]
  specific = ModelConfig(name="m", base_path="/x")
  specific.model_version_policy.specific.versions.extend([1, 7])
  assert wanted_versions(specific, [1, 2, 5]) == [1]
  every = ModelConfig(name="m", base_path="/x")
  every.model_version_policy.all.SetInParent()
  assert wanted_versions(every, [1, 2, 5]) == [1, 2, 5]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_, object]),
       st.lists(st.integers(0, 3), max_size=3), st.booleans(), st.randoms(use_true_random=False))
def test_fill_tensor_proto_reads_back_as_tf_make_tensor_proto_does(dtype, shape, transpose, rnd):
  rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
  array = rng.integers(0, 50, size=shape).astype(dtype if dtype is not object else np.int64)
  if dtype is object:
    array = np.vectorize(lambda x: f"item{x}".encode(), otypes=[object])(array) if array.size else array.astype(object)
  if transpose:
    array = array.T  # not C-contiguous
  proto = tensor_pb2.TensorProto()
  fill_tensor_proto(proto, array)
  expected = tf.make_tensor_proto(array, dtype=tf.string if dtype is object else None)
  assert proto.dtype == expected.dtype and proto.tensor_shape == expected.tensor_shape
  np.testing.assert_array_equal(tf.make_ndarray(proto), tf.make_ndarray(expected))


def test_a_new_version_is_the_newest_plus_one_and_never_overwrites(tmp_path):
  assert new_version(str(tmp_path / "missing")) == 1
  for name in ("1", "10", "9", ".staging-11-ab12", "notes"):  # numeric order, digits only
    (tmp_path / name).mkdir()
  assert new_version(str(tmp_path)) == 11 and new_version(str(tmp_path), 4) == 4
  with pytest.raises(ValueError, match="version 9 already exists"):
    new_version(str(tmp_path), 9)
