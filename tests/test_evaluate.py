"""tfkf.evaluate's statistics: per-example metrics, user-resampled bootstrap intervals,
the user of each example, and most popular counted on training targets only."""

import numpy as np
import tensorflow as tf

from tfkf import data, evaluate, features


def _write(path, split, examples):
  """examples: (user, target, history) triples, in file order, into `split`."""
  (path / split).mkdir(parents=True)
  with tf.io.TFRecordWriter(str(path / split / "part-0.tfrecord")) as writer:
    for user, target, history in examples:
      f = {features.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
           features.TARGET_ITEM: tf.train.Feature(int64_list=tf.train.Int64List(value=[target])),
           features.HISTORY_ITEM: tf.train.Feature(int64_list=tf.train.Int64List(value=history))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def test_per_example_values_average_to_the_summary():
  ranks = np.array([0, 3, 9, 10, 99, 700])
  values = evaluate.per_example(ranks)
  summary = evaluate.summarize(ranks)
  assert values["hr@10"].tolist() == [1, 1, 1, 0, 0, 0]
  for metric, v in values.items():
    assert np.isclose(v.mean(), summary[metric])


def test_bootstrap_resamples_users_not_examples():
  # 20 users, 10 examples each, all of a user's examples equal: 20 units, not 200.
  rng = np.random.default_rng(0)
  per_user = rng.integers(0, 2, 20).astype(float)
  values, users = np.repeat(per_user, 10), np.repeat(np.arange(20), 10)
  low, high = evaluate.bootstrap_interval(values, users, samples=2000)
  assert low < values.mean() < high
  as_examples = evaluate.bootstrap_interval(values, np.arange(200), samples=2000)
  # The width of a mean of 20 independent units is ~sqrt(10) that of 200 units.
  assert (high - low) > 2.5 * (as_examples[1] - as_examples[0])


def test_paired_bootstrap_of_a_constant_difference_is_that_constant():
  users = np.repeat(np.arange(30), 3)
  ours = np.random.default_rng(1).random(90)
  low, high = evaluate.bootstrap_interval(ours - (ours - 0.25), users)
  assert np.isclose(low, 0.25) and np.isclose(high, 0.25)


def test_split_users_follow_the_reader_order(tmp_path):
  examples = [(f"u{i % 7}", 2 + i, [2 + i]) for i in range(50)]
  _write(tmp_path, "test", examples)
  users = data.split_users(str(tmp_path), "test")
  read = np.concatenate([b[features.TARGET_ITEM].numpy() for b in data.dataset(
      str(tmp_path), "test", 8, 4, (), shuffle=False, drop_remainder=False)])
  assert [u.decode() for u in users] == [examples[t - 2][0] for t in read]


def test_most_popular_counts_training_targets_only(tmp_path):
  # Item 5 is the most frequent training target; item 9 is frequent only as a test target.
  _write(tmp_path, "train", [("a", 5, [2]), ("b", 5, [3]), ("c", 4, [2])])
  _write(tmp_path, "test", [("a", 9, [5]), ("b", 9, [5]), ("c", 9, [4]), ("d", 9, [2])])
  (tmp_path / "metadata.json").write_text('{"vocab_sizes": {"item": 10}}')
  batch = next(iter(data.dataset(str(tmp_path), "test", 4, 4, (), shuffle=False)))
  scores = evaluate.popularity_scorer(str(tmp_path))(batch).numpy()
  assert scores.shape == (4, 10)
  assert scores[0, 5] > scores[0, 4] > scores[0, 9] == scores[0, 2] == 0.0


def test_interest_usage_credits_each_served_item_to_its_maxsim_interest():
  interests = tf.constant([[[1.0, 0.0], [0.0, 1.0]]] * 2)  # [b=2, k=2, d=2]
  items = tf.constant([[0, 0], [0, 0], [1, 0], [0.8, 0.1], [0, 1], [0.1, 0.7]], tf.float32)
  history = tf.constant([[0, 0], [0, 3]], tf.int64)  # the second user has seen item 3
  usage = evaluate.interest_usage(interests, items, history, tf.constant([5, 5]), top_k=3)
  # Top 3: items 2, 4, 3 for the first user; 2, 4, 5 for the second (3 is history).
  assert usage["from_interest"].tolist() == [[2, 1], [1, 2]]
  assert usage["target_interest"].tolist() == [1, 1] and usage["hit"].tolist() == [False, True]
  summary = evaluate.summarize_interest_usage(**usage)
  assert summary["target_wins"] == [0.0, 1.0] and summary["hit_target_wins"] == [0.0, 1.0]
  assert summary["top_k_from_interest"] == [1.5, 1.5]
  assert summary["top_k_from_interest_sorted"] == [2.0, 1.0] and summary["interests_in_top_k"] == 2.0
