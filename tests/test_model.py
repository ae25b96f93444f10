"""The defining property of each KuaiFormer mechanism."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfkf import features, layers
from tfkf.config import PRESETS
from tfkf.losses import (SmoothedInBatchSoftmax, mixed_sampling_probability, with_logq_correction,
                         with_uniform_negatives)
from tensorflow_recommenders.layers.loss import MIN_FLOAT
from tiny_model import histories, model_for


def test_paper_preset_transformer_sees_55_plus_k_positions_for_256_events():
  config = PRESETS["paper"].replace(d_model=32, num_heads=2, ffn_dim=64, num_layers=1)
  model = model_for(config)
  tokens, valid = model.user_tower.sequence(histories(config, [256, 3]))
  assert tokens.shape[1] == 55 + config.num_query_tokens == config.num_sequence_tokens
  # A 3-event history: every compressed window is masked, 3 + k positions are real.
  assert valid.numpy()[1].sum() == 3 + config.num_query_tokens
  assert valid.numpy()[0].all()


def test_rotary_turns_each_pair_of_dims_by_its_position_and_scores_depend_on_offsets_only():
  from tfkf.layers.attention import rotary
  rng = np.random.default_rng(0)
  x, positions = rng.normal(size=(2, 3, 5, 8)).astype("float32"), np.array([0, 1, 4, 9, 30])
  angles = positions[:, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8)         # [T, pairs]
  a, b = x[..., 0::2], x[..., 1::2]
  turned = np.stack([a * np.cos(angles) - b * np.sin(angles),
                     a * np.sin(angles) + b * np.cos(angles)], -1).reshape(x.shape)
  np.testing.assert_allclose(rotary(tf.constant(x), tf.constant(positions)), turned, atol=1e-5)
  # RoPE: a query at m against a key at n scores by m - n, wherever both sit.
  q, k = (tf.constant(rng.normal(size=(1, 1, 1, 8)).astype("float32")) for _ in range(2))
  score = lambda m, n: float(tf.reduce_sum(rotary(q, tf.constant([m])) * rotary(k, tf.constant([n]))))
  assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), abs=1e-3)


def test_query_tokens_are_causal_among_themselves():
  config = PRESETS["small"]
  model = model_for(config)
  batch = histories(config, [40])
  before = model(batch).numpy()
  queries = model.user_tower.query_tokens.queries
  j = 2
  queries.assign(tf.tensor_scatter_nd_add(queries, [[j]], tf.ones([1, config.d_model])))
  after = model(batch).numpy()
  np.testing.assert_allclose(after[:, :j], before[:, :j], atol=1e-6)
  assert (np.abs(after[:, j:] - before[:, j:]).max(axis=-1) > 1e-3).all()


def test_values_in_padded_positions_never_change_the_interests():
  config = PRESETS["small"]
  model = model_for(config)
  clean = histories(config, [5, 30, 64])
  noisy = {k: v.copy() for k, v in clean.items()}
  pad = clean[features.HISTORY_ITEM] == features.PAD_ID
  for name in config.event_features:
    noisy[features.history_key(name)][pad] = 1  # garbage under the padding
  np.testing.assert_allclose(model(noisy).numpy(), model(clean).numpy(), atol=1e-5)


def test_more_left_padding_leaves_the_interests_unchanged():
  config = PRESETS["small"].replace(compression_windows=(), max_len=24)
  model = model_for(config)
  short = histories(config, [3, 17])
  longer = histories(config.replace(max_len=60), [3, 17])
  wide = model_for(config.replace(max_len=60))
  wide.set_weights(model.get_weights())
  np.testing.assert_allclose(wide(longer).numpy(), model(short).numpy(), atol=1e-5)


def test_dot_product_scoring_leaves_interests_and_items_unnormalised():
  config = PRESETS["small"].replace(training_targets="every_event")
  cosine = model_for(config)
  dot = model_for(config.replace(normalize_embeddings=False, temperature=1.0))
  dot.set_weights(cosine.get_weights())
  batch = histories(config, [40, 7], seed=2)
  items = tf.constant([2, 5, 9], tf.int64)
  unit = lambda x: np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-5)  # noqa: E731
  unit(cosine(batch).numpy())
  unit(cosine.candidate_tower(items).numpy())
  last = len(config.compression_windows) + config.num_latest_events - 1  # the newest event's token
  unit(cosine.user_tower.interests_at(batch, tf.constant([last - 5, last])).numpy())
  raw, raw_items = dot(batch).numpy(), dot.candidate_tower(items).numpy()
  assert np.abs(np.linalg.norm(raw, axis=-1) - 1).min() > 0.1
  assert np.abs(np.linalg.norm(raw_items, axis=-1) - 1).min() > 0.1
  # Same weights: normalising the dot-product model's outputs gives the cosine model's.
  np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=-1, keepdims=True), cosine(batch).numpy(),
                             atol=1e-5)
  cut = dot.user_tower.interests_at(batch, tf.constant([last])).numpy()[:, 0]
  np.testing.assert_allclose(cut, raw, atol=2e-5)
  assert np.isfinite(dot.compute_loss({**batch, features.TARGET_ITEM: np.array([3, 4])},
                                      training=True).numpy())


def test_embedding_dropout_drops_history_tokens_while_training_only():
  config = PRESETS["small"].replace(compression_windows=(), max_len=24, embedding_dropout=0.5,
                                    event_feature_dropout=0.0)
  model = model_for(config)
  batch = histories(config, [24, 24])
  kept, _ = model.user_tower.events(batch)
  dropped, _ = model.user_tower.events(batch, training=True)
  np.testing.assert_allclose(model.user_tower.events(batch)[0].numpy(), kept.numpy())
  zero = dropped.numpy() == 0
  assert 0.4 < zero.mean() < 0.6  # inverted dropout: the others are scaled by 1 / (1 - 0.5)
  np.testing.assert_allclose(dropped.numpy()[~zero], 2 * kept.numpy()[~zero], rtol=1e-5)


def test_history_augmentation_changes_the_inputs_while_training_only_never_the_targets():
  config = PRESETS["small"].replace(compression_windows=(), max_len=24, event_feature_dropout=0.0,
                                    training_targets="every_event", event_substitution=0.5,
                                    event_dropout=0.5)
  model = model_for(config)
  batch = histories(config, [24, 10])
  items = tf.constant(batch[features.HISTORY_ITEM], tf.int64)
  substituted = model.user_tower.event_substitution(items, training=True).numpy()
  real = items.numpy() >= features.NUM_RESERVED_IDS
  assert (substituted[~real] == items.numpy()[~real]).all()  # padding stays padding
  assert 0.3 < (substituted[real] != items.numpy()[real]).mean() < 0.6
  assert (substituted >= features.NUM_RESERVED_IDS).sum() == real.sum()
  tokens, valid = model.user_tower.events(batch, training=True)
  dropped = np.all(tokens.numpy() == 0, axis=-1)
  assert 0.3 < dropped[valid.numpy()].mean() < 0.7  # whole event tokens, not elements
  np.testing.assert_array_equal(valid.numpy(), real)
  # At inference the augmented model is the one without augmentation.
  plain = model_for(config.replace(event_substitution=0.0, event_dropout=0.0))
  plain.set_weights(model.get_weights())
  np.testing.assert_allclose(model.user_tower.events(batch)[0].numpy(),
                             plain.user_tower.events(batch)[0].numpy())
  with pytest.raises(ValueError, match=r"event_substitution=1.0: a rate in \[0, 1\)"):
    config.replace(event_substitution=1.0)
  batch[features.TARGET_ITEM] = np.array([5, 6])
  _, targets, _ = model._every_event_targets(batch, training=True)
  logged = items.numpy()
  np.testing.assert_array_equal(targets.numpy(), np.concatenate([logged[0, 1:], [5], logged[1, -9:], [6]]))


def test_in_batch_substitutes_are_the_batch_own_events_at_their_frequency():
  pad, first = features.PAD_ID, features.NUM_RESERVED_IDS
  # 3/4 of the real events are `first`, 1/4 `first + 1`; the catalog has 10,000 items.
  items = tf.constant([[pad, pad] + [first] * 6 + [first + 1] * 2] * 500, tf.int64)
  real = items.numpy() != pad
  in_batch = layers.EventSubstitution(0.5, 10_000, "in_batch")(items, training=True).numpy()
  np.testing.assert_array_equal(in_batch[~real], pad)
  assert set(np.unique(in_batch[real])) == {first, first + 1}
  drawn_first = (in_batch[:, 2:] == first).mean()  # 0.5 * 3/4 kept + 0.5 * 3/4 drawn
  assert 0.72 < drawn_first < 0.78
  uniform = layers.EventSubstitution(0.5, 10_000, "uniform")(items, training=True).numpy()
  assert 0.45 < (uniform[real] > first + 1).mean() < 0.55  # tail items enter the history
  np.testing.assert_array_equal(layers.EventSubstitution(0.5, 10_000, "in_batch")(items), items)
  with pytest.raises(ValueError, match="event_substitution_source='popular'"):
    PRESETS["small"].replace(event_substitution_source="popular")


def test_an_all_padding_compression_window_contributes_nothing():
  base = PRESETS["small"].replace(max_len=40, compression_windows=(8,))
  more_windows = base.replace(max_len=56, compression_windows=(8, 8, 8))
  a, b = model_for(base), model_for(more_windows)
  b.set_weights(a.get_weights())
  # 20 events: the windows of both models hold only padding.
  np.testing.assert_allclose(b(histories(more_windows, [20])).numpy(),
                             a(histories(base, [20])).numpy(), atol=1e-5)


def test_a_3000_event_history_keeps_the_latest_max_len_events_and_1_event_works():
  config = PRESETS["small"]
  model = model_for(config)
  long = histories(config, [3000, 1], width=3000)
  latest = {k: v[:, -config.max_len:] for k, v in long.items()}
  interests = model(long).numpy()
  np.testing.assert_allclose(interests, model(latest).numpy(), atol=1e-6)
  assert np.isfinite(interests).all()
  np.testing.assert_allclose(np.linalg.norm(interests, axis=-1), 1.0, atol=1e-5)


def reference_loss(logits, labels, alpha, removed):
  """NumPy: -(1-a) log p_pos - a/|B| sum over negatives (not removed) of log p_neg."""
  z = logits - logits.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  negatives = (1 - labels) * (1 - removed)
  b = logits.shape[1]
  return -(1 - alpha) * (labels * log_p).sum(1) - alpha / b * (negatives * log_p).sum(1)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
@pytest.mark.parametrize("logq", [False, True])
@pytest.mark.parametrize("accidental_hits", [False, True])
def test_smoothed_loss_matches_numpy_reference(alpha, logq, accidental_hits):
  rng = np.random.default_rng(3)
  b = 5
  logits = rng.normal(size=(b, b)).astype(np.float32)
  ids = np.array([7, 3, 7, 9, 3])
  prob = rng.uniform(0.01, 0.5, b).astype(np.float32)
  labels = np.eye(b, dtype=np.float32)
  corrected = logits - np.log(prob)[None, :] if logq else logits
  removed = np.zeros((b, b), np.float32)
  if accidental_hits:
    removed = ((ids[:, None] == ids[None, :]) & (labels == 0)).astype(np.float32)
  y_pred = np.where(removed > 0, corrected + MIN_FLOAT, corrected).astype(np.float32)
  got = SmoothedInBatchSoftmax(alpha)(labels, y_pred).numpy()
  expected = reference_loss(corrected, labels, alpha, removed).mean()
  if accidental_hits:  # removed candidates leave the softmax denominator too
    expected = reference_loss(np.where(removed > 0, -1e30, corrected), labels, alpha, removed).mean()
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  if alpha == 0:
    ce = tf.keras.losses.CategoricalCrossentropy(from_logits=True)(labels, y_pred).numpy()
    np.testing.assert_allclose(got, ce, rtol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.0, 1.5])
def test_logq_correction_subtracts_weight_times_log_q_from_the_maxsim_logit(weight):
  rng = np.random.default_rng(4)
  b, k, t = 6, 3, 0.05
  interests = rng.normal(size=(b, k, 8)).astype(np.float32)
  candidates = rng.normal(size=(b, 8)).astype(np.float32)
  prob = np.array([0.2, 0.05, 1e-3, 1e-4, 1e-8, 0.3], np.float32)  # 1e-8: below tfrs's clip
  task = tfrs.tasks.Retrieval(loss=SmoothedInBatchSoftmax(0.1), temperature=t)
  got = task(*with_logq_correction(interests, candidates, tf.constant(prob), weight, t))
  maxsim = np.einsum("bkd,cd->bkc", interests, candidates).max(axis=1)
  logits = maxsim / t - weight * np.log(prob)[None, :]
  expected = reference_loss(logits, np.eye(b, dtype=np.float32), 0.1, np.zeros((b, b))).mean()
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_an_item_no_training_target_chose_counts_as_the_rarest_seen_item():
  from tfkf.model import KuaiFormer
  from tiny_model import catalog
  config = PRESETS["small"].replace(dropout=0.0, event_feature_dropout=0.0, logq_weight=1.5)
  seen = catalog()
  seen.sampling_probability[2:] = np.linspace(0.001, 0.04, len(seen.sampling_probability) - 2)
  unseen = catalog()
  unseen.sampling_probability[:] = seen.sampling_probability
  unseen.sampling_probability[7] = 0.0  # a held-out target's item: a candidate in validation
  rarest = catalog()
  rarest.sampling_probability[:] = seen.sampling_probability
  rarest.sampling_probability[7] = 0.001
  batch = {**histories(config, [5, 9, 20, 30]), features.TARGET_ITEM: np.array([7, 3, 4, 5])}
  losses = []
  for c in (unseen, rarest):
    tf.keras.utils.set_random_seed(1)
    losses.append(float(KuaiFormer(config, c).build_towers().compute_loss(batch)))
  assert np.isfinite(losses[0]) and losses[0] == pytest.approx(losses[1])


def test_fit_reports_loss_and_in_batch_accuracy():
  config = PRESETS["small"]
  model = model_for(config)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  batch = histories(config, [10, 20, 30, 40])
  batch[features.TARGET_ITEM] = np.array([2, 3, 4, 5])
  logs = model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), epochs=1, verbose=0).history
  assert set(logs) >= {"loss", "in_batch_accuracy"}
  assert np.isfinite(logs["loss"]).all()


def test_uniform_negatives_are_real_items_drawn_uniformly():
  ids = with_uniform_negatives(tf.constant([7, 8]), num_items=12, count=20_000).numpy()
  assert list(ids[:2]) == [7, 8]
  counts = np.bincount(ids[2:], minlength=12)  # 2,000 expected per real item, sd 42
  assert counts[:features.NUM_RESERVED_IDS].sum() == 0 and (abs(counts[2:] - 2000) < 300).all()
  # logQ of the mixture: B p(i) + M / N expected draws of item i, here B 4, M 8, N 10.
  p = tf.constant([0.5, 0.01])
  corrected = mixed_sampling_probability(p, 4, 8, 10).numpy()
  np.testing.assert_allclose(corrected[0] / corrected[1], (4 * 0.5 + 0.8) / (4 * 0.01 + 0.8), rtol=1e-6)
  np.testing.assert_allclose(mixed_sampling_probability(p, 4, 0, 10), p)


def test_mixed_negatives_join_the_in_batch_ones_in_training_only():
  config = PRESETS["small"].replace(label_smoothing=0.0, use_logq=False, dropout=0.0,
                                    event_feature_dropout=0.0)
  in_batch = model_for(config)
  mixed = model_for(config.replace(mixed_negatives=64))
  mixed.set_weights(in_batch.get_weights())
  batch = {**histories(config, [5, 9, 20, 30]), features.TARGET_ITEM: np.array([2, 3, 4, 5])}
  # Validation scores against the batch's targets alone, as before.
  assert float(mixed.compute_loss(batch)) == pytest.approx(float(in_batch.compute_loss(batch)))
  # Training adds 64 negatives to each softmax: every target's probability can only drop.
  assert float(mixed.compute_loss(batch, training=True)) > \
      float(in_batch.compute_loss(batch, training=True)) + 0.1


def _cut_history(batch, cut: int):
  """The histories with every event after position `cut` removed (left-padded again)."""
  width = batch[features.HISTORY_ITEM].shape[1]
  return {k: np.concatenate([np.zeros_like(v[:, cut + 1:]), v[:, :cut + 1]], axis=1)
          for k, v in batch.items()} if cut + 1 < width else batch


def test_interests_at_a_cut_point_are_those_of_the_history_cut_there():
  config = PRESETS["small"].replace(compression_windows=())
  model = model_for(config)
  batch = histories(config, [40, 64, 10], seed=4)
  cuts = [5, 30, 50, 63]
  at_cuts = model.user_tower.interests_at(batch, tf.constant(cuts)).numpy()
  assert at_cuts.shape == (3, len(cuts), config.num_query_tokens, config.d_model)
  for c, cut in enumerate(cuts):
    alone = model(_cut_history(batch, cut)).numpy()
    real = batch[features.HISTORY_ITEM][:, cut] != features.PAD_ID  # a cut at padding has no target
    np.testing.assert_allclose(at_cuts[real, c], alone[real], atol=2e-5)


def test_a_cut_points_interests_ignore_later_events_and_other_cut_points():
  config = PRESETS["small"]  # with compression: windows at fixed slots, cuts in the latest events
  model = model_for(config)
  batch = histories(config, [64, 50], seed=5)
  first_raw = len(config.compression_windows)
  offset = sum(config.compression_windows) - first_raw   # event slot of token position p: p + offset
  cut = first_raw + 10
  alone = model.user_tower.interests_at(batch, tf.constant([cut])).numpy()[:, 0]
  changed = {k: v.copy() for k, v in batch.items()}
  later = slice(cut + offset + 1, None)
  changed[features.HISTORY_ITEM][:, later] = np.random.default_rng(9).integers(2, 40, changed[
      features.HISTORY_ITEM][:, later].shape)
  with_others = model.user_tower.interests_at(changed, tf.constant([cut + 5, cut, first_raw + 20]))
  np.testing.assert_allclose(with_others.numpy()[:, 1], alone, atol=2e-5)
  assert not np.allclose(with_others.numpy()[:, 0], alone, atol=1e-3), "later cuts do see the change"


def test_every_event_training_targets_the_next_item_after_each_real_latest_event():
  config = PRESETS["small"].replace(training_targets="every_event")
  model = model_for(config)
  batch = histories(config, [64, 5], seed=6)
  batch[features.TARGET_ITEM] = np.array([7, 8], np.int64)
  batch[features.HISTORY_ITEM][0, -3] = features.OOV_ID  # seen in a history, never a target
  tail = features.uncompressed_len(config.max_len, config.compression_windows)
  interests, targets, rows = model._every_event_targets(batch, training=False)
  items = batch[features.HISTORY_ITEM][:, -tail:]
  expected = [list(items[0, 1:]) + [7], list(items[1, -4:]) + [8]]  # row 2: 5 real events
  expected = [t for t in expected[0] + expected[1] if t != features.OOV_ID]
  assert targets.numpy().tolist() == expected and len(expected) == tail + 5 - 1
  assert interests.shape == (tail + 5 - 1, config.num_query_tokens, config.d_model)
  assert rows.numpy().tolist() == [0] * (len(expected) - 5) + [1] * 5  # row 1: 5 targets
  # num_targets: only an example's last n targets (the online trainer's examples).
  last_n = {**batch, features.NUM_TARGETS: np.array([3, features.ALL_TARGETS], np.int64)}
  few_interests, few, _ = model._every_event_targets(last_n, training=False)
  assert few.numpy().tolist() == [t for t in list(items[0, -2:]) + [7] if t != features.OOV_ID] + \
      expected[-5:]
  np.testing.assert_allclose(few_interests.numpy(), interests.numpy()[-len(few):], atol=1e-6)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  data = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in batch.items()}).repeat(3)
  losses = model.fit(data, epochs=1, verbose=0).history["loss"]
  assert np.isfinite(losses).all()


@pytest.mark.parametrize("width", [None, 24])
def test_a_whole_historys_first_event_is_a_target_of_the_empty_history(width):
  config = PRESETS["small"].replace(training_targets="every_event", first_event_targets=True)
  model = model_for(config)
  tail = config.num_latest_events                                    # 24 of max_len 64
  lengths = [config.max_len, tail, 5] if width is None else [tail, 5]
  batch = histories(config, lengths, seed=11, width=width)
  batch[features.TARGET_ITEM] = np.arange(7, 7 + len(lengths))
  interests, targets, rows = model._every_event_targets(batch, training=False)
  expected, first_cuts = [], []
  for row, n in enumerate(lengths):
    events = list(batch[features.HISTORY_ITEM][row, -n:]) + [7 + row]
    if n < config.max_len:  # else older events may have been cut off: no first-event target
      first_cuts.append(len(expected))
      expected.append(events[0])
    expected += events[n - min(n, tail) + 1:]
  assert targets.numpy().tolist() == expected
  assert np.bincount(rows.numpy()).tolist() == [min(n, tail) + (n < config.max_len) for n in lengths]
  empty = {k: np.zeros_like(v[:1]) for k, v in batch.items() if v.ndim == 2}
  no_history = model(empty).numpy()[0]
  for cut in first_cuts:
    np.testing.assert_allclose(interests.numpy()[cut], no_history, atol=2e-5)
  without = model_for(config.replace(first_event_targets=False))
  without.set_weights(model.get_weights())
  plain_interests, plain_targets, _ = without._every_event_targets(batch, training=False)
  assert plain_targets.numpy().tolist() == np.delete(expected, first_cuts).tolist()
  np.testing.assert_allclose(plain_interests.numpy(), np.delete(interests.numpy(), first_cuts, 0),
                             atol=2e-5)


def test_same_history_targets_are_no_negatives_of_each_other_when_masked():
  from tfkf.losses import same_history_mask
  mask = same_history_mask(tf.constant([0, 0, 1, 1, 1]))
  expected = np.array([[1, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0],
                       [1, 1, 0, 0, 1]], bool)
  np.testing.assert_array_equal(mask.numpy(), expected)
  # With the same weights and batch, the masked loss drops each history's other targets
  # from every softmax: lower than the unmasked one (fewer, and never smaller, terms).
  config = PRESETS["small"].replace(training_targets="every_event", label_smoothing=0.0,
                                    use_logq=False, mask_same_history=False)
  batch = {k: tf.constant(v) for k, v in histories(config, [64, 40], seed=8).items()}
  batch[features.TARGET_ITEM] = tf.constant([7, 8], tf.int64)
  model = model_for(config)
  masked = model_for(config.replace(mask_same_history=True))
  masked.set_weights(model.get_weights())
  tf.keras.utils.set_random_seed(0)
  plain_loss = float(model.compute_loss(batch, training=True))
  tf.keras.utils.set_random_seed(0)
  masked_loss = float(masked.compute_loss(batch, training=True))
  assert masked_loss < plain_loss


def test_histories_narrower_than_the_latest_events_give_the_interests_of_padded_ones():
  config = PRESETS["small"]  # max_len 64, the latest 24 events uncompressed
  model = model_for(config)
  tail = features.uncompressed_len(config.max_len, config.compression_windows)
  padded = histories(config, [3, 17, tail], seed=7)
  narrow = {k: v[:, -tail:] for k, v in padded.items()}
  tokens, _ = model.user_tower.events(narrow)
  assert tokens.shape[1] == len(config.compression_windows) + tail  # old columns never embedded
  np.testing.assert_allclose(model(narrow).numpy(), model(padded).numpy(), atol=2e-5)
  narrower = {k: v[:2, -17:] for k, v in padded.items()}  # as wide as the longer of two rows
  np.testing.assert_allclose(model(narrower).numpy(), model(padded).numpy()[:2], atol=2e-5)


def test_every_event_targets_of_a_trimmed_batch_are_those_of_the_padded_one():
  config = PRESETS["small"].replace(training_targets="every_event")
  model = model_for(config)
  padded = histories(config, [2, 9, 5], seed=8)
  padded[features.TARGET_ITEM] = np.array([3, 4, 5], np.int64)
  trimmed = {k: (v[:, -9:] if v.ndim == 2 else v) for k, v in padded.items()}
  interests, targets, _ = model._every_event_targets(padded, training=False)
  narrow_interests, narrow_targets, _ = model._every_event_targets(trimmed, training=False)
  assert targets.numpy().tolist() == narrow_targets.numpy().tolist()
  assert len(targets) == 2 + 9 + 5
  np.testing.assert_allclose(narrow_interests.numpy(), interests.numpy(), atol=2e-5)


def _embedding_steps(optimizer, batches, table):
  """`table` after one optimizer step per batch of row ids (loss: weighted sum of the rows)."""
  variable = tf.Variable(table)
  optimizer.build([variable])
  weights = tf.constant(np.arange(1, table.shape[1] + 1, dtype="float32"))
  for ids in batches:
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.gather(variable, ids) * weights * tf.cast(ids[:, None] + 1, tf.float32))
    gradient = tape.gradient(loss, variable)
    assert isinstance(gradient, tf.IndexedSlices)
    optimizer.apply_gradients([(gradient, variable)])
  return variable.numpy()


def test_lazy_adam_moves_only_the_rows_of_the_batch():
  from tfkf.optimizers import LazyAdam
  table = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
  first, both = [tf.constant([1, 3, 3])], [tf.constant([1, 3, 3]), tf.constant([1])]
  lazy_first = _embedding_steps(LazyAdam(0.1), first, table)
  lazy = _embedding_steps(LazyAdam(0.1), both, table)
  adam = _embedding_steps(tf.keras.optimizers.Adam(0.1), both, table)
  np.testing.assert_array_equal(lazy[[0, 2, 4]], table[[0, 2, 4]])
  np.testing.assert_array_equal(lazy[3], lazy_first[3])   # not in the second batch: stays
  assert not np.allclose(lazy[1], lazy_first[1])
  assert not np.allclose(adam[3], lazy_first[3])          # Keras's Adam keeps moving it


def test_lazy_adam_is_adam_when_every_row_is_in_every_batch():
  from tfkf.optimizers import LazyAdam
  table = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
  batches = [tf.constant([0, 1, 2, 3, 2]), tf.constant([3, 2, 1, 0]), tf.constant([1, 0, 3, 2, 2])]
  np.testing.assert_allclose(_embedding_steps(LazyAdam(0.01), batches, table),
                             _embedding_steps(tf.keras.optimizers.Adam(0.01), batches, table),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lazy", [True, False])
def test_with_lazy_adam_an_items_embedding_stops_when_the_batches_stop_holding_it(lazy):
  from tfkf.checkpoint import build_model
  from tiny_model import catalog
  config = PRESETS["small"].replace(lazy_adam=lazy)
  model = build_model(config, catalog(), 1e-2)
  holds_45, without_45 = histories(config, [10, 20]), histories(config, [10, 20], seed=1)
  without_45[features.HISTORY_ITEM] = np.minimum(without_45[features.HISTORY_ITEM], 40)
  holds_45[features.TARGET_ITEM], without_45[features.TARGET_ITEM] = [45, 3], [2, 3]
  table = model.token_embedding.item_table.embeddings
  model.fit(tf.data.Dataset.from_tensors(holds_45), epochs=1, verbose=0)
  after_its_batch = table.numpy()[45]
  model.fit(tf.data.Dataset.from_tensors(without_45).repeat(2), epochs=1, verbose=0)
  # Lazy: row 45 stays; Keras's Adam moves it on with its decaying moments.
  assert np.array_equal(table.numpy()[45], after_its_batch) == lazy


def test_weight_decay_shrinks_weights_outside_the_batch_but_not_the_norm_scales():
  from tfkf.checkpoint import build_model
  from tiny_model import catalog
  config = PRESETS["small"].replace(lazy_adam=True, event_feature_dropout=0.0)
  plain, decayed = (build_model(config.replace(weight_decay=wd), catalog(), 1e-2) for wd in (0.0, 0.5))
  decayed.set_weights(plain.get_weights())
  batch = histories(config, [10, 20])
  batch[features.HISTORY_ITEM] = np.minimum(batch[features.HISTORY_ITEM], 40)
  batch[features.TARGET_ITEM] = [2, 3]
  for model in (plain, decayed):
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
  # Row 45 is in no batch: LazyAdam leaves it, the decay scales it by 1 - rate x decay.
  table = lambda model: model.token_embedding.item_table.embeddings.numpy()
  np.testing.assert_allclose(table(decayed)[45], table(plain)[45] * (1 - 1e-2 * 0.5), rtol=1e-6)
  scales = lambda model: [v.numpy() for v in model.trainable_variables if "scale" in v.name]
  assert scales(plain), "the towers have RMSNorm scales"
  for mine, theirs in zip(scales(decayed), scales(plain)):
    np.testing.assert_allclose(mine, theirs, rtol=1e-5)


@pytest.mark.parametrize("candidate_bias", [True, False])
def test_without_candidate_bias_no_offset_is_shared_by_every_item(candidate_bias):
  config = PRESETS["small"].replace(item_features=(), candidate_bias=candidate_bias)
  model = model_for(config)
  table = model.token_embedding.item_table.embeddings
  if candidate_bias:  # zeros at initialisation; training moves it
    model.candidate_tower.project.bias.assign(tf.ones([config.d_model]))
  table.assign(tf.tensor_scatter_nd_update(table, [[7]], tf.zeros([1, config.d_model])))
  untrained = model.candidate_tower(tf.constant([7], tf.int64)).numpy()[0]
  # An item with nothing of its own: the shared offset's direction, or nothing at all.
  assert np.allclose(untrained, 0.0) != candidate_bias


def test_uniform_negative_bce_is_sasrecs_loss_on_maxsim_logits():
  from tfkf.losses import uniform_negative_bce
  rng = np.random.default_rng(3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  interests, pos, neg = (unit(rng.normal(size=s)).astype("float32")
                         for s in ([6, 3, 4], [6, 4], [6, 5, 4]))
  softplus = lambda x: np.log1p(np.exp(x))
  best = lambda items: (interests[:, None] @ items[..., None])[..., 0].max(axis=-1) / 0.1
  one = np.mean(softplus(-best(pos[:, None]))[:, 0] + softplus(best(neg[:, :1]))[:, 0])
  assert float(uniform_negative_bce(interests, pos, neg[:, :1], 0.1)) == pytest.approx(one, rel=1e-5)
  # m negatives per target: their terms are averaged.
  several = np.mean(softplus(-best(pos[:, None]))[:, 0] + softplus(best(neg)).mean(axis=1))
  assert float(uniform_negative_bce(interests, pos, neg, 0.1)) == pytest.approx(several, rel=1e-5)


@pytest.mark.parametrize("base, auxiliary", [
    ({}, {"uniform_bce_weight": 1.0}),
    ({"training_targets": "every_event", "embedding_dropout": 0.3}, {"contrastive_weight": 1.0}),
], ids=["uniform_negative_bce", "view_contrastive"])
def test_an_auxiliary_loss_joins_training_and_leaves_validation_alone(base, auxiliary):
  config = PRESETS["small"].replace(**base)
  batch = histories(config, [10, 20, 30, 40])
  batch[features.TARGET_ITEM] = np.array([2, 3, 4, 5])
  plain = model_for(config)
  with_auxiliary = model_for(config.replace(**auxiliary))
  with_auxiliary.set_weights(plain.get_weights())
  for training in (False, True):
    tf.random.set_seed(0)
    a = float(plain.compute_loss(batch, training=training))
    tf.random.set_seed(0)
    b = float(with_auxiliary.compute_loss(batch, training=training))
    assert (b > a) if training else (b == pytest.approx(a))


def test_several_uniform_negatives_per_target_train_through_fit():
  config = PRESETS["small"].replace(uniform_bce_weight=1.0, uniform_bce_negatives=8)
  batch = histories(config, [10, 20, 30, 40])
  batch[features.TARGET_ITEM] = np.array([2, 3, 4, 5])
  model = model_for(config)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  before = float(model.compute_loss(batch, training=True))
  history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(20), verbose=0)
  assert np.isfinite(history.history["loss"][-1]) and history.history["loss"][-1] < before


def test_the_uniform_loss_takes_its_own_temperature_and_defaults_to_the_softmaxs():
  config = PRESETS["small"].replace(uniform_bce_weight=1.0)
  batch = histories(config, [10, 20, 30, 40])
  batch[features.TARGET_ITEM] = np.array([2, 3, 4, 5])
  models = [model_for(config.replace(uniform_bce_temperature=t))
            for t in (0.0, config.temperature, 1.0)]
  losses = []
  for model in models:
    model.set_weights(models[0].get_weights())
    tf.random.set_seed(0)
    losses.append(float(model.compute_loss(batch, training=True)))
  default, same, warmer = losses
  assert same == pytest.approx(default) and warmer != pytest.approx(default, rel=1e-3)


def test_a_uniform_loss_without_negatives_is_refused():
  with pytest.raises(ValueError, match="uniform_bce_negatives=0: 1 or more"):
    PRESETS["small"].replace(uniform_bce_negatives=0)
  with pytest.raises(ValueError, match="uniform_bce_temperature=-1"):
    PRESETS["small"].replace(uniform_bce_temperature=-1.0)


def test_view_contrastive_loss_is_infonce_over_other_histories_in_both_directions():
  from tfkf.losses import view_contrastive_loss
  rng = np.random.default_rng(5)
  a, b = (rng.normal(size=[5, 2, 4]).astype("float32") for _ in range(2))
  rows = np.array([0, 0, 1, 2, 2])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  sim = np.einsum("ikd,jkd->ij", unit(a), unit(b)) / 2 / 0.1  # mean cosine of the k pairs
  negative = (rows[:, None] != rows[None, :]) | np.eye(5, dtype=bool)

  def infonce(logits):
    logits = np.where(negative, logits, -np.inf)
    return -np.diag(logits) + np.log(np.exp(logits).sum(axis=1))

  expected = np.mean((infonce(sim) + infonce(sim.T)) / 2)
  assert float(view_contrastive_loss(a, b, rows, 0.1)) == pytest.approx(expected, rel=1e-5)
  # Views that agree pair by pair cost less than views of other histories.
  assert float(view_contrastive_loss(a, a, rows, 0.1)) < float(view_contrastive_loss(a, b, rows, 0.1))


def test_the_contrastive_loss_is_refused_without_every_event_training():
  with pytest.raises(ValueError, match="contrastive_weight needs training_targets='every_event'"):
    PRESETS["small"].replace(training_targets="last", contrastive_weight=0.1)


def test_a_catalog_grown_in_place_gives_the_model_rebuilt_from_its_checkpoint(tmp_path):
  """KuaiFormer.use_catalog (the online trainer's resident model): spare table rows are no
  items until the catalog grows into them, and growing in place equals rebuilding."""
  import dataclasses
  from tfkf.checkpoint import build_model
  from tiny_model import catalog
  full, known = catalog(), 40
  first = dataclasses.replace(full, **{name: getattr(full, name)[:known] for name in (
      "item_ids", "tag", "author", "duration", "sampling_probability")}, table_rows=len(full.item_ids))
  # Every uniform draw of training at once: negatives, the auxiliary loss's, substitutes.
  config = PRESETS["small"].replace(mixed_negatives=64, uniform_bce_weight=1.0,
                                    event_substitution=0.5)
  model = build_model(config, first, 1e-2)
  assert model.side_features.num_items == len(full.item_ids)
  assert model.item_embeddings().shape[0] == known
  batch = histories(config, [10, 20, 30, 40])
  batch[features.HISTORY_ITEM] = np.minimum(batch[features.HISTORY_ITEM], known - 1)
  batch[features.TARGET_ITEM] = np.array([2, 3, 4, 5])
  table = model.token_embedding.item_table.embeddings
  before = table.numpy()
  model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), epochs=1, verbose=0)
  spare = before[known:]
  np.testing.assert_array_equal(table.numpy()[known:], spare)  # never drawn, never moved
  assert not np.allclose(table.numpy()[2:6], before[2:6])

  model.use_catalog(full)
  np.testing.assert_array_equal(model.side_features.tables["tag"].numpy(), full.tag)
  grown = histories(config, [10, 20, 30, 40], seed=3)  # ids up to 49: the new items too
  grown[features.TARGET_ITEM] = np.array([45, 46, 3, 4])
  model.fit(tf.data.Dataset.from_tensors(grown).repeat(2), epochs=1, verbose=0)  # traced anew
  assert not np.allclose(table.numpy()[45], spare[45 - known])
  model.save_weights(str(tmp_path / "weights"))
  rebuilt = build_model(config, full, 1e-2)
  rebuilt.load_weights(str(tmp_path / "weights")).assert_existing_objects_matched()
  np.testing.assert_allclose(model.item_embeddings(), rebuilt.item_embeddings(), atol=1e-6)
  np.testing.assert_allclose(model(grown), rebuilt(grown), atol=1e-6)
  np.testing.assert_allclose(model.sampling_probability, rebuilt.sampling_probability)
  with pytest.raises(ValueError, match="table rows"):
    model.use_catalog(dataclasses.replace(full, table_rows=len(full.item_ids) + 1))


@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranks_scored_chunk_by_chunk_are_those_of_the_whole_catalog(exclude_history):
  from tfkf import evaluate, scoring
  config = PRESETS["small"]
  model = model_for(config)
  batch = histories(config, [1, 5, 20, 40, 64, 3])
  items = model.item_embeddings()
  targets = tf.constant([7, 11, 2, 49, 30, 5], tf.int64)
  targets = tf.tensor_scatter_nd_update(targets, [[4]], batch[features.HISTORY_ITEM][4:5, -1])  # one repeats
  interests = model(batch)
  whole = evaluate.target_ranks(scoring.maxsim(interests, items)[0], batch[features.HISTORY_ITEM],
                                targets, exclude_history)
  for chunk in (1, 7, 48, 1000):
    chunked = evaluate.chunked_target_ranks(interests, batch[features.HISTORY_ITEM], targets,
                                            model.candidate_tower, items.shape[0], exclude_history,
                                            chunk)
    np.testing.assert_array_equal(chunked, whole)
  assert len(set(whole.numpy())) > 3
