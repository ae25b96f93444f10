"""SASRec: the published training objective, causality, and loading like KuaiFormer."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfkf import checkpoint, features
from tfkf.baselines import sasrec
from tfkf.catalog import Catalog

NUM_ITEMS = 60
CONFIG = sasrec.PRESETS["small"].replace(dropout=0.0)


def catalog():
  return Catalog(item_ids=np.array([""] * 2 + [str(i) for i in range(NUM_ITEMS - 2)], object),
                 tag=np.zeros(NUM_ITEMS, np.int64), author=np.zeros(NUM_ITEMS, np.int64),
                 duration=np.zeros(NUM_ITEMS, np.int64),
                 sampling_probability=np.full(NUM_ITEMS, 1.0 / NUM_ITEMS, np.float32),
                 vocab_sizes={"item": NUM_ITEMS, "tag": 2, "author": 2})


def model_for(config=CONFIG):
  tf.keras.utils.set_random_seed(1)
  return sasrec.SASRec(config, catalog()).build_towers()


def batch(lengths, seed=0, width=CONFIG.max_len):
  rng = np.random.default_rng(seed)
  history = np.zeros([len(lengths), width], np.int64)
  for row, n in enumerate(lengths):
    history[row, width - n:] = rng.integers(2, NUM_ITEMS, n)
  return {features.HISTORY_ITEM: history,
          features.TARGET_ITEM: rng.integers(2, NUM_ITEMS, len(lengths))}


def test_positives_are_the_history_shifted_by_one_then_the_target():
  history = tf.constant([[0, 0, 5, 6, 7]], tf.int64)
  assert sasrec.next_items(history, tf.constant([9])).numpy().tolist() == [[0, 5, 6, 7, 9]]


def test_bce_averages_one_positive_and_one_negative_over_real_positions_only(monkeypatch):
  model = model_for()
  b = batch([3, CONFIG.max_len, 1])
  negatives = np.random.default_rng(1).integers(2, NUM_ITEMS, b[features.HISTORY_ITEM].shape)
  monkeypatch.setattr(sasrec, "sample_negatives", lambda *a: tf.constant(negatives))
  loss = float(model.compute_loss(b))
  history = b[features.HISTORY_ITEM]
  outputs = model.encoder(tf.constant(history)).numpy()
  table = model.item_embeddings().numpy()
  positives = np.concatenate([history[:, 1:], b[features.TARGET_ITEM][:, None]], axis=1)
  logit = lambda ids: np.sum(outputs * table[ids], axis=-1)
  per_position = np.log1p(np.exp(-logit(positives))) + np.log1p(np.exp(logit(negatives)))
  real = history != features.PAD_ID
  assert real.sum() == 3 + CONFIG.max_len + 1
  assert loss == pytest.approx(per_position[real].mean(), rel=1e-4)


def test_negatives_are_one_real_item_per_position_outside_the_sequence():
  sequence = tf.constant(np.random.default_rng(0).integers(2, 12, [64, 10]))
  tf.random.set_seed(0)
  negatives = sasrec.sample_negatives(sequence, 10, NUM_ITEMS, redraws=8).numpy()
  assert negatives.shape == (64, 10) and negatives.min() >= 2 and negatives.max() < NUM_ITEMS
  in_row = (negatives[:, :, None] == sequence.numpy()[:, None, :]).any(-1)
  assert not in_row.any()
  # Without redraws, over 10 items, draws land inside the row.
  first = sasrec.sample_negatives(sequence, 10, 12, redraws=0).numpy()
  assert (first[:, :, None] == sequence.numpy()[:, None, :]).any(-1).any()


def test_outputs_are_causal_and_ignore_left_padding():
  model = model_for()
  b = batch([CONFIG.max_len])
  before = model.encoder(tf.constant(b[features.HISTORY_ITEM])).numpy()
  changed = b[features.HISTORY_ITEM].copy()
  changed[0, -1] = 2 if changed[0, -1] != 2 else 3
  after = model.encoder(tf.constant(changed)).numpy()
  np.testing.assert_allclose(after[0, :-1], before[0, :-1], atol=1e-5)
  assert not np.allclose(after[0, -1], before[0, -1], atol=1e-3)
  # A short history gives the same interest whatever width it is padded to.
  short = batch([4], seed=2, width=6)
  padded = {features.HISTORY_ITEM: np.pad(short[features.HISTORY_ITEM], [[0, 0], [10, 0]])}
  out = model(short).numpy()
  assert out.shape == (1, 1, CONFIG.d_model)
  np.testing.assert_allclose(model(padded).numpy(), out, atol=1e-5)


@pytest.mark.parametrize("loss", sasrec.LOSSES)
def test_model_fit_lowers_the_loss(loss):
  model = model_for(CONFIG.replace(loss=loss))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  ds = tf.data.Dataset.from_tensors(batch([CONFIG.max_len, 7] * 16, seed=3))
  loss_of = lambda: model.evaluate(ds, verbose=0, return_dict=True)["loss"]
  before = loss_of()
  model.fit(ds.repeat(30), epochs=1, verbose=0)
  assert loss_of() < 0.8 * before


def test_layers_and_config_round_trip():
  block = sasrec.SASRecBlock(2, 0.3)
  assert sasrec.SASRecBlock.from_config(block.get_config()).get_config() == block.get_config()
  ffn = sasrec.PointWiseFeedForward(0.1)
  assert sasrec.PointWiseFeedForward.from_config(ffn.get_config()).dropout == 0.1
  config = CONFIG.replace(loss="in_batch", use_logq=True)
  assert checkpoint.config_from_json(checkpoint.config_json(config)) == config
  with pytest.raises(ValueError):
    CONFIG.replace(loss="hinge")


def test_load_trained_restores_a_sasrec_run(tmp_path):
  model = model_for()
  with open(os.path.join(tmp_path, checkpoint.CONFIG_FILE), "w") as f:
    f.write(checkpoint.config_json(CONFIG))
  model.save_weights(os.path.join(tmp_path, checkpoint.WEIGHTS))
  loaded = checkpoint.load_trained(str(tmp_path), catalog())
  assert isinstance(loaded, sasrec.SASRec) and checkpoint.kind_of(loaded.config) == "sasrec"
  b = batch([5, 9])
  np.testing.assert_allclose(loaded(b).numpy(), model(b).numpy(), atol=1e-6)
  np.testing.assert_allclose(loaded.item_embeddings().numpy(), model.item_embeddings().numpy())


def test_in_batch_logq_is_kuaiformers_correction():
  config = CONFIG.replace(loss="in_batch")
  b = batch([6, 9, CONFIG.max_len], seed=2)
  def loss(use_logq, probability=None):
    c = catalog()
    if probability is not None:
      c.sampling_probability[:] = probability
    tf.keras.utils.set_random_seed(1)
    return float(sasrec.SASRec(config.replace(use_logq=use_logq), c).build_towers().compute_loss(b))
  # Uniform q shifts every logit alike: the softmax, and so the loss, are those without logQ.
  assert loss(True) == pytest.approx(loss(False), rel=1e-5)
  skewed = np.linspace(1e-8, 0.1, NUM_ITEMS).astype(np.float32)  # 1e-8: below tfrs's own clip
  assert np.isfinite(loss(True, skewed)) and loss(True, skewed) != pytest.approx(loss(False), rel=1e-3)
