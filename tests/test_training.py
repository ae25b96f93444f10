"""The training job: multi-worker training, resuming a killed job, the learning-rate schedule."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import cli
from beam_pipelines import build, synthetic


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("train_data")
  synthetic.generate(synthetic.parse_args(["--users=300", "--items=300", "--seed=2",
                                           f"--output={d / 'raw' / 'log.csv'}"]))
  build.run(["--runner=DirectRunner", f"--input={d / 'raw' / 'log.csv'}", "--format=kuairand",
             f"--output_dir={d / 'data'}", "--max_len=64"])
  return str(d / "data")


def _train_args(data_dir, model_dir, *extra):
  return ["-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
          "--preset=small", "--batch_size=32", "--validation_steps=2", "--verbose=2", *extra]


ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
LEARNING_RATE = "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"


def _checkpoint(path):
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_two_workers_end_with_identical_weights(data_dir, tmp_path):
  ports = [cli.free_port(), cli.free_port()]
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = {**cli.env(), "TF_CONFIG": json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}})}
    procs.append(subprocess.Popen(
        [sys.executable, *_train_args(data_dir, tmp_path / "run", "--strategy=multi_worker",
                                      "--epochs=2", "--steps_per_epoch=4")],
        cwd=cli.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  chief = _checkpoint(str(tmp_path / "run" / "weights" / "final"))
  other = _checkpoint(str(tmp_path / "run" / "workers" / "worker-1" / "weights" / "final"))
  weights = [k for k in chief if "user_tower" in k or "token_embedding" in k]
  assert weights and set(chief) == set(other)
  for key in chief:
    np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
  assert int(chief[ITERATIONS]) == 8  # 2 epochs x 4 steps, in lockstep


def test_a_killed_job_resumes_from_its_backup(data_dir, tmp_path):
  args = _train_args(data_dir, tmp_path / "run", "--epochs=2", "--steps_per_epoch=60",
                     "--backup_every_steps=5", "--lr_schedule=warmup_cosine", "--warmup_steps=10",
                     "--learning_rate=0.01")
  first = subprocess.Popen([sys.executable, *args], cwd=cli.ROOT, env=cli.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  backup = tmp_path / "run" / "backup"
  deadline = time.monotonic() + 180
  while not (backup.exists() and any("index" in f.name for f in backup.rglob("*"))):
    assert first.poll() is None, "training ended before it could be killed"
    assert time.monotonic() < deadline, "no backup written"
    time.sleep(0.2)
  time.sleep(1.0)
  first.send_signal(signal.SIGKILL)
  first.wait()
  out = cli.run("tfkf.train", *args[2:])
  start = json.loads(next(l for l in out.splitlines() if "train_begin_step" in l))["train_begin_step"]
  assert 0 < start < 120, f"restart began at step {start}: it did not resume mid-way"
  final = _checkpoint(str(tmp_path / "run" / "weights" / "final"))
  assert int(final[ITERATIONS]) == 120, "the restart continued the step count: none lost or redone"
  # The schedule follows the optimizer's step across the restart: the 120th step's rate.
  assert np.isclose(final[LEARNING_RATE], 0.01 * 0.5 * (1 + np.cos(np.pi * 119 / 120)), rtol=1e-4)


def test_training_keeps_only_the_item_features_that_vary_over_the_catalog(data_dir):
  from tfkf import data, features, train
  from tfkf.baselines.sasrec import SASRecConfig
  from tfkf.catalog import Catalog
  from tfkf.config import PRESETS
  meta, catalog = data.metadata(data_dir), Catalog.load(data_dir)
  # Built without an item-feature file: every tag and author is "unknown"; durations come
  # from the log's play records.
  assert train.fitted_to_data(PRESETS["small"], meta, catalog).item_features == ("duration",)
  catalog.tag[catalog.real_items] = np.arange(catalog.num_items - 2) % 3
  assert train.fitted_to_data(PRESETS["small"], meta, catalog).item_features == ("tag", "duration")
  catalog.duration[catalog.real_items] = features.OOV_ID
  assert train.fitted_to_data(PRESETS["small"], meta, catalog).item_features == ("tag",)
  assert train.fitted_to_data(SASRecConfig(), meta, catalog) == SASRecConfig()


def test_a_chunk_build_is_refused_to_a_model_that_would_skip_its_targets():
  from tfkf.config import PRESETS
  from tfkf.train import check_layout
  chunks = {"layout": "chunks", "chunk_len": 24}
  every_event = PRESETS["small"].replace(training_targets="every_event")  # 24 latest events
  check_layout(every_event, chunks)
  check_layout(PRESETS["small"], {"layout": "targets", "chunk_len": 24})
  with pytest.raises(SystemExit, match="training_targets=every_event"):
    check_layout(PRESETS["small"], chunks)
  with pytest.raises(SystemExit, match="--chunk_len=24"):
    check_layout(every_event, {**chunks, "chunk_len": 48})


def test_warmup_cosine_rises_then_decays_to_zero_over_the_horizon():
  from tfkf.train import WarmupCosine
  schedule = WarmupCosine(1e-3, warmup_steps=10, total_steps=100)
  assert np.isclose(schedule.rate(0, 0.0), 1e-4) and np.isclose(schedule.rate(9, 0.09), 1e-3 * 0.5 * (1 + np.cos(0.09 * np.pi)))
  rates = [schedule.rate(step, step / 100) for step in range(10, 101)]
  assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] == 0.0
  assert schedule.rate(500, 1.7) == 0.0  # past the horizon (a wall-clock budget's last epoch)


def test_select_by_a_curve_metric_ends_on_the_weights_of_its_best_point(data_dir, tmp_path):
  from tfkf import data, evaluate
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained
  run = tmp_path / "run"
  cli.run("tfkf.train", *_train_args(data_dir, run, "--epochs=3", "--steps_per_epoch=5",
                                     "--learning_rate=0.02", f"--curve_data_dir={data_dir}",
                                     "--curve_examples=150", "--curve_every_seconds=0",
                                     "--select_by=sampled_mrr")[2:])
  curve = json.loads((run / "learning_curve.json").read_text())
  best = max(curve["points"], key=lambda p: p["sampled_mrr"])
  assert curve["selected_by"] == "sampled_mrr" and curve["selected_step"] == best["step"]
  assert len({p["sampled_mrr"] for p in curve["points"]}) > 1  # a choice was made
  model = load_trained(str(run), Catalog.load(data_dir))
  # The curve's 150 examples are spread over the split: every n-th. Both protocols of the
  # saved model are those of the point, its negatives the full split's draws for those rows.
  every = curve["every"]
  assert every == data.metadata(data_dir)["splits"]["valid"]["examples"] // 150 > 1
  negatives = evaluate.sampled_negatives(data_dir, "valid", 100, seed=0)[::every][:150]
  np.testing.assert_array_equal(
      negatives, evaluate.sampled_negatives(data_dir, "valid", 100, seed=0, every=every)[:150])
  saved = evaluate.evaluate_protocols(evaluate.model_scorer(model), data_dir, "valid",
                                      model.config.max_len, model.config.event_features,
                                      max_examples=150, negatives=negatives, every=every)
  assert saved["full"]["mrr"] == pytest.approx(best["mrr"], abs=1e-6)
  assert saved["sampled"]["mrr"] == pytest.approx(best["sampled_mrr"], abs=1e-6)
  assert saved["sampled"]["hr@10"] == pytest.approx(best["sampled_hr@10"], abs=1e-6)
  # The curve is the run's validation: no validation-loss pass, nor its checkpoint.
  assert not (run / "checkpoints").exists() and not (run / "logs" / "validation").exists()
  from tfkf import train
  with pytest.raises(SystemExit, match="give --curve_data_dir"):
    train.train(train.parse_args(_train_args(data_dir, tmp_path / "refused",
                                             "--select_by=hr@100")[2:]))
  with pytest.raises(SystemExit, match="--curve_num_negatives=400: .* too few"):
    train.train(train.parse_args(_train_args(data_dir, tmp_path / "too_many", "--epochs=1",
                                             f"--curve_data_dir={data_dir}",
                                             "--curve_num_negatives=400")[2:]))


def test_weight_average_validates_and_ends_on_the_average_while_training_steps_the_raw_weights():
  from tfkf.train import WeightAverage

  def fit(callbacks, validate=True):
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    seen = {"raw": [], "validated": [], "epoch_end": []}

    class Record(tf.keras.callbacks.Callback):
      def on_train_begin(self, logs=None):
        seen["raw"].append(_flat(self.model))

      def on_train_batch_end(self, batch, logs=None):
        seen["raw"].append(_flat(self.model))

      def on_test_begin(self, logs=None):
        seen["validated"].append(_flat(self.model))

      def on_epoch_end(self, epoch, logs=None):
        seen["epoch_end"].append(_flat(self.model))

    model.fit(x, y, batch_size=16, epochs=3, validation_data=(x, y) if validate else None,
              shuffle=False, callbacks=[*callbacks, Record()], verbose=0)
    return _flat(model), seen

  _, plain = fit([])
  final, averaged = fit([WeightAverage(0.5)])
  # Training steps the raw weights exactly as it does without averaging...
  np.testing.assert_allclose(averaged["raw"], plain["raw"], rtol=1e-6)
  # ...while validation (after each epoch's 4 steps) and the trained model see the average.
  average, expected = averaged["raw"][0], []
  for step, weights in enumerate(averaged["raw"][1:], start=1):
    average = 0.5 * average + 0.5 * weights
    if step % 4 == 0:
      expected.append(average)
  np.testing.assert_allclose(averaged["validated"], expected, rtol=1e-5)
  np.testing.assert_allclose(final, expected[-1], rtol=1e-5)
  assert not np.allclose(final, averaged["raw"][-1])
  # Without validation (a curve-selected run) the epoch's end sees the average all the same.
  for validate in (True, False):
    final, seen = fit([WeightAverage(0.5)], validate)
    np.testing.assert_allclose(seen["epoch_end"], expected, rtol=1e-5)
    np.testing.assert_allclose(final, expected[-1], rtol=1e-5)


def _flat(model):
  return np.concatenate([w.ravel() for w in model.get_weights()])
