"""Trains KuaiFormer (or a trainable baseline) with model.fit on the Beam TFRecords.

  python -m tfkf.train --data_dir=data/built --model_dir=runs/demo --preset=small \
      --epochs=3 --steps_per_epoch=200
  python -m tfkf.train --model=sasrec --preset=paper --data_dir=data/games --model_dir=runs/sasrec

Writes into --model_dir: config.json, weights/ (the weights training ends on: of the
epoch with the lowest validation loss, or with --select_by of the learning curve's best
point, which then replaces the validation-loss pass), checkpoints/ (best by validation loss),
backup/ (BackupAndRestore: a killed job resumes where it stopped) and logs/ (TensorBoard).
config.json of a baseline names its kind ("model": "sasrec"); without that key it is a
KuaiFormerConfig.
"""

import argparse
import collections
import json
import math
import os
import time

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfkf import data
from tfkf import evaluate
from tfkf.catalog import Catalog
from tfkf.checkpoint import (CONFIG_FILE, KUAIFORMER, MODELS, WEIGHTS, build_model, config_json,
                             kind_of)

def strategy_from(name: str, min_shard_bytes: int = 256 << 10) -> tf.distribute.Strategy:
  if name == "parameter_server":
    return parameter_server_strategy(min_shard_bytes)
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":  # Cluster from TF_CONFIG.
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def parameter_server_strategy(min_shard_bytes: int) -> tf.distribute.ParameterServerStrategy:
  """The cluster of TF_CONFIG: the chief coordinates model.fit; a worker or ps task serves
  the cluster here until it is killed (TensorFlow's parameter-server training has no end
  for them). A variable larger than min_shard_bytes (an embedding table) is split over the
  ps tasks in parts of about that size (MinSizePartitioner); smaller ones go whole, round-robin."""
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if resolver.task_type in ("worker", "ps"):
    tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                         task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc",
                         start=True).join()
  shards = resolver.cluster_spec().num_tasks("ps")
  partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
      min_shard_bytes=min_shard_bytes, max_shards=shards)
  return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def shard_placement(model: tf.keras.Model) -> dict:
  """{variable: [the device of each of its parts]} of the variables split over the ps tasks."""
  parts = collections.defaultdict(list)
  for weight in model.weights:
    name, split, _ = weight.name.rpartition("/part_")
    if split:
      parts[name].append(weight.device)
  return dict(parts)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """The worker that owns --model_dir (the chief, or worker 0 when there is none)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                           and resolver.task_id == 0)


def writable_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Every worker must save (saving is collective); only the chief saves to model_dir."""
  if is_chief(strategy):
    return model_dir
  r = strategy.cluster_resolver
  return os.path.join(model_dir, "workers", f"{r.task_type}-{r.task_id}")


class LogStartStep(tf.keras.callbacks.Callback):
  """Prints the optimizer step training starts from: > 0 after BackupAndRestore resumed."""

  def on_train_begin(self, logs=None):
    print(json.dumps({"train_begin_step": int(self.model.optimizer.iterations.numpy())}),
          flush=True)


CURVE_METRICS = ["mrr", *(f"hr@{k}" for k in evaluate.CUTOFFS), "ndcg@10", "ndcg@100",
                 *(f"sampled_{m}" for m in ("mrr", "hr@1", "hr@5", "hr@10", "ndcg@10"))]


class LearningCurve(tf.keras.callbacks.Callback):
  """At the end of each epoch ending `every_seconds` of training after the last point:
  metrics of `examples` examples of a split against the training seconds so far (its own
  evaluation time left out), into `path`: full-catalog ones, and the sampled protocol's
  against `num_negatives` uniform negatives ("sampled_hr@10", ...; 0: none). The examples
  are spread over the split (every n-th): its order follows user ids, and the first ones
  are not like the rest (Games' early users are harder). With `select_by` (a metric such as
  "hr@100"), training ends on the weights of the point best by it, which the file names."""

  def __init__(self, data_dir: str, split: str, examples: int, every_seconds: float, path: str,
               select_by: str = None, num_negatives: int = 100):
    super().__init__()
    self.data_dir, self.split, self.examples = data_dir, split, examples
    self.every_seconds, self.path, self.select_by = every_seconds, path, select_by
    self.every = max(1, data.metadata(data_dir)["splits"][split]["examples"] // max(examples, 1))
    self.negatives = (evaluate.sampled_negatives(data_dir, split, num_negatives, seed=0,
                                                 max_examples=examples, every=self.every)
                      if num_negatives else None)  # the same for every point
    self.paused = 0.0

  def on_train_begin(self, logs=None):
    self.start, self.points, self.epoch = time.monotonic(), [], 0
    self.best, self.best_weights = None, None

  def on_epoch_end(self, epoch, logs=None):
    self.epoch = epoch + 1
    last = self.points[-1]["train_seconds"] if self.points else 0.0
    if time.monotonic() - self.start - self.paused - last >= self.every_seconds:
      self._add_point()

  def on_train_end(self, logs=None):
    if self.epoch and (not self.points or self.points[-1]["epoch"] != self.epoch):
      self._add_point()  # the curve ends at the trained model
    if self.best_weights is not None:
      self.model.set_weights(self.best_weights)

  def _add_point(self):
    began = time.monotonic()
    config = self.model.config
    both = evaluate.evaluate_protocols(evaluate.model_scorer(self.model), self.data_dir,
                                       self.split, config.max_len, config.event_features,
                                       max_examples=self.examples, negatives=self.negatives,
                                       every=self.every)
    metrics = {**both["full"], **{f"sampled_{k}": v for k, v in both.get("sampled", {}).items()
                                  if k != "examples"}}
    self.points.append({"epoch": self.epoch, "train_seconds": began - self.start - self.paused,
                        "step": int(self.model.optimizer.iterations.numpy()), **metrics})
    if self.select_by and (self.best is None or metrics[self.select_by] > self.best[self.select_by]):
      self.best, self.best_weights = self.points[-1], self.model.get_weights()
    self.paused += time.monotonic() - began
    selected = {"selected_by": self.select_by, "selected_step": self.best["step"]} if self.best else {}
    with tf.io.gfile.GFile(self.path, "w") as f:
      json.dump({"split": self.split, "every": self.every, **selected, "points": self.points},
                f, indent=1)


class TimeBudget(tf.keras.callbacks.Callback):
  """Stops at the end of the first epoch that ends `seconds` of training after it began
  (time a LearningCurve spent evaluating is not training)."""

  def __init__(self, seconds: float, curve: LearningCurve = None):
    super().__init__()
    self.seconds = seconds
    self.curve = curve

  def on_train_begin(self, logs=None):
    self.start = time.monotonic()

  def elapsed(self) -> float:
    """Seconds of training so far."""
    return time.monotonic() - self.start - (self.curve.paused if self.curve else 0.0)

  def on_epoch_end(self, epoch, logs=None):
    if self.elapsed() >= self.seconds:
      self.model.stop_training = True


class WeightAverage(tf.keras.callbacks.Callback):
  """Polyak averaging: validation, the checkpoints and the trained model use an exponential
  moving average of the trainable weights (average <- m average + (1 - m) weights after each
  step); the optimizer keeps stepping the raw weights. The average is swapped in when
  validation begins (without validation: at the epoch's end) and stays in through the epoch's
  end (where EarlyStopping, ModelCheckpoint and a LearningCurve read the weights), and out
  again before the next step. Put it first among the callbacks, so that training ends on the
  average before the others restore theirs.
  tf-keras's optimizer `use_ema` instead only averages into the weights every N steps or at the
  end of fit, so model selection would never see the average."""

  def __init__(self, momentum: float):
    super().__init__()
    if not 0.0 < momentum < 1.0:
      raise ValueError(f"WeightAverage: momentum must be in (0, 1), got {momentum}")
    self.momentum = momentum

  def on_train_begin(self, logs=None):
    self._average, self._swapped_in = None, False

  def _start(self):
    """The average starts at the weights of the first step: after BackupAndRestore resumed."""
    weights = self.model.trainable_variables
    self._average = [tf.Variable(w, trainable=False) for w in weights]
    self._raw = [tf.Variable(w, trainable=False) for w in weights]

  @tf.function
  def _update(self):
    for average, weight in zip(self._average, self.model.trainable_variables):
      average.assign(self.momentum * average + (1.0 - self.momentum) * weight)

  def on_train_batch_begin(self, batch, logs=None):
    if self._average is None:
      self._start()
    if self._swapped_in:
      for raw, weight in zip(self._raw, self.model.trainable_variables):
        weight.assign(raw)
      self._swapped_in = False

  def on_train_batch_end(self, batch, logs=None):
    self._update()

  def on_test_begin(self, logs=None):
    self._swap_in()

  def on_epoch_end(self, epoch, logs=None):
    self._swap_in()

  def on_train_end(self, logs=None):
    self._swap_in()

  def _swap_in(self):
    if self._average is not None and not self._swapped_in:
      for raw, average, weight in zip(self._raw, self._average, self.model.trainable_variables):
        raw.assign(weight)
        weight.assign(average)
      self._swapped_in = True


class WarmupCosine(tf.keras.callbacks.Callback):
  """Learning rate: linear warm-up over `warmup_steps`, then a cosine decay to 0 over the
  training horizon: the wall-clock `budget` when there is one (the budget, not a step
  count, ends such a run), else `total_steps`. After a resume the budget's clock restarts."""

  def __init__(self, base: float, warmup_steps: int, total_steps: int,
               budget: TimeBudget = None):
    super().__init__()
    self.base, self.warmup_steps, self.total_steps, self.budget = (base, warmup_steps,
                                                                   total_steps, budget)

  def rate(self, step: int, progress: float) -> float:
    warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
    return self.base * warmup * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

  def on_train_batch_begin(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    progress = (self.budget.elapsed() / self.budget.seconds if self.budget
                else step / self.total_steps)
    self.model.optimizer.learning_rate.assign(self.rate(step, progress))


def check_layout(config, build_flags: dict) -> None:
  """KuaiFormer on the chunk layout must train every target of each chunk (every_event, with
  at least chunk_len uncompressed latest events), else targets are silently never trained."""
  if kind_of(config) != KUAIFORMER or build_flags.get("layout") != "chunks":
    return
  chunk = build_flags["chunk_len"]
  if config.training_targets != "every_event":
    raise SystemExit(f"tfkf.train: the data is built with --layout=chunks (one example per {chunk} "
                     "targets); train it with training_targets=every_event")
  tail = config.num_latest_events
  if tail < chunk:
    raise SystemExit(f"tfkf.train: chunks of {chunk} targets, but the model's every_event training "
                     f"covers its {tail} uncompressed latest events: rebuild with --chunk_len={tail}")


def fitted_to_data(config, meta: dict, catalog: Catalog):
  """`config` with only the features that tell the data's events and items apart: the event
  features the build carries (a sasrec log has none) and KuaiFormer's item features that
  vary over the catalog. One constant over every item would add the same vector to each
  item's embedding: an offset shared by all, along which a rarely trained item points (on
  Games, whose items carry no side features, dropping them lifted the targets seen 3-29
  times; see tfkf.config PRESETS). Written to config.json, so every later load builds the same model."""
  provided = meta["event_features"]
  config = config.replace(event_features=tuple(f for f in config.event_features if f in provided))
  if kind_of(config) == KUAIFORMER:
    config = config.replace(item_features=tuple(f for f in config.item_features if catalog.varies(f)))
  return config


def bucketing(config, args) -> dict:
  """Training batches of every_event KuaiFormer: histories of similar length, about
  --targets_per_batch targets each (each example has at most its latest events' targets)."""
  if kind_of(config) != KUAIFORMER or config.training_targets != "every_event":
    return {}
  return {"targets_per_batch": args.targets_per_batch,
          "targets_per_example": config.num_latest_events,
          "first_event_targets": config.first_event_targets}


def train(args) -> dict:
  tf.keras.utils.set_random_seed(args.seed)
  presets = MODELS[args.model][0]
  if args.preset not in presets:
    raise SystemExit(f"tfkf.train: --model={args.model} has presets {sorted(presets)}")
  if args.select_by != "val_loss" and not args.curve_data_dir:
    raise SystemExit(f"tfkf.train: --select_by={args.select_by} is a learning-curve metric: "
                     "give --curve_data_dir")
  config = presets[args.preset]
  if args.config_overrides:
    config = config.replace(**json.loads(args.config_overrides))
  meta = data.metadata(args.data_dir)
  check_layout(config, meta["flags"])
  catalog = Catalog.load(args.data_dir)
  config = fitted_to_data(config, meta, catalog)
  strategy = strategy_from(args.strategy, args.min_shard_bytes)
  out = writable_dir(args.model_dir, strategy)
  tf.io.gfile.makedirs(out)
  with tf.io.gfile.GFile(os.path.join(out, CONFIG_FILE), "w") as f:
    f.write(config_json(config))
  with strategy.scope():
    model = build_model(config, catalog, args.learning_rate)
  read = lambda split, **kw: data.dataset(args.data_dir, split, args.batch_size, config.max_len,
                                          config.event_features, seed=args.seed,
                                          # KuaiFormer takes histories of any width
                                          trim=kind_of(config) == KUAIFORMER, **kw)
  curve_metric = None if args.select_by == "val_loss" else args.select_by
  # A curve-selected run validates on its curve only: the val_loss pass took 1/8 of a
  # budgeted KuaiFormer's training clock, and nothing would read it.
  by_val_loss = [
      tf.keras.callbacks.ModelCheckpoint(os.path.join(args.model_dir, "checkpoints", "best"),
                                         monitor="val_loss", save_best_only=True,
                                         save_weights_only=True),
      tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience,
                                       restore_best_weights=True),
  ] if curve_metric is None else []
  callbacks = [
      tf.keras.callbacks.BackupAndRestore(os.path.join(args.model_dir, "backup"),
                                          save_freq=args.backup_every_steps or "epoch"),
      *by_val_loss,
      tf.keras.callbacks.TensorBoard(os.path.join(out, "logs")),
      LogStartStep(),
  ]
  if args.average_weights:
    if args.strategy != "default":
      raise SystemExit("tfkf.train: --average_weights runs with --strategy=default only")
    callbacks.insert(0, WeightAverage(args.average_weights))
  curve = None
  if args.curve_data_dir:
    try:
      curve = LearningCurve(args.curve_data_dir, "valid", args.curve_examples,
                            args.curve_every_seconds, os.path.join(out, "learning_curve.json"),
                            select_by=curve_metric, num_negatives=args.curve_num_negatives)
    except ValueError as e:  # a catalog too small for the sampled protocol
      raise SystemExit(f"tfkf.train: --curve_num_negatives={args.curve_num_negatives}: {e} "
                       "(give fewer, or 0 for full-catalog metrics only)") from e
    callbacks.append(curve)
  budget = TimeBudget(args.max_train_seconds, curve) if args.max_train_seconds else None
  if budget:
    callbacks.append(budget)
  if args.lr_schedule == "warmup_cosine":
    callbacks.append(WarmupCosine(args.learning_rate, args.warmup_steps,
                                  args.epochs * args.steps_per_epoch, budget))
  if isinstance(strategy, tf.distribute.ParameterServerStrategy):
    print(json.dumps({"sharded_variables": shard_placement(model)}), flush=True)
  history = model.fit(read("train", repeat=True, **bucketing(config, args)), epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch,
                      validation_data=None if curve_metric else read("valid", shuffle=False),
                      validation_steps=args.validation_steps, callbacks=callbacks,
                      verbose=args.verbose)
  model.save_weights(os.path.join(out, WEIGHTS))
  return {k: [float(x) for x in v] for k, v in history.history.items()}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True, help="output_dir of beam_pipelines.build")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--model", choices=sorted(MODELS), default=KUAIFORMER,
                 help="sasrec: the baseline of tfkf/baselines/sasrec.py")
  p.add_argument("--preset", choices=sorted(set().union(*(m[0] for m in MODELS.values()))),
                 default="paper", help="a preset of --model")
  p.add_argument("--config_overrides", default="",
                 help='JSON of config fields to change, e.g. \'{"num_query_tokens": 1}\'')
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--steps_per_epoch", type=int, default=500)
  p.add_argument("--validation_steps", type=int, default=None,
                 help="default: the whole valid split")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--targets_per_batch", type=int, default=2048,
                 help="training_targets=every_event: training targets per batch (it replaces "
                      "--batch_size, which still sizes validation batches)")
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--lr_schedule", choices=["constant", "warmup_cosine"], default="constant",
                 help="warmup_cosine: linear warm-up over --warmup_steps, then cosine decay to 0 "
                      "over --max_train_seconds (else --epochs x --steps_per_epoch)")
  p.add_argument("--warmup_steps", type=int, default=100)
  p.add_argument("--average_weights", type=float, default=0.0,
                 help="momentum m of a moving average of the weights that validation, "
                      "checkpoints and the trained model use (e.g. 0.99; 0: the raw weights)")
  p.add_argument("--patience", type=int, default=3,
                 help="early stopping on val_loss (none with a curve metric's --select_by)")
  p.add_argument("--backup_every_steps", type=int, default=0,
                 help="BackupAndRestore frequency in steps (0: every epoch)")
  p.add_argument("--max_train_seconds", type=float, default=0,
                 help="stop after the first epoch ending past this many seconds (0: no limit)")
  p.add_argument("--curve_data_dir", default="",
                 help="a learning curve (learning_curve.json in --model_dir): full-catalog "
                      "and sampled-protocol metrics on the valid split of this build (same "
                      "item ids)")
  p.add_argument("--curve_examples", type=int, default=2000, help="valid examples per point")
  p.add_argument("--curve_every_seconds", type=float, default=0,
                 help="training seconds between points (0: every epoch)")
  p.add_argument("--curve_num_negatives", type=int, default=100,
                 help="uniform negatives per example of the curve's sampled protocol "
                      "(sampled_hr@10, ...; 0: full-catalog metrics only)")
  p.add_argument("--select_by", choices=["val_loss", *CURVE_METRICS], default="val_loss",
                 help="the saved weights: those of the epoch with the lowest validation loss, or "
                      "of the learning curve's point best by this metric (needs --curve_data_dir)")
  p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker", "parameter_server"],
                 default="default", help="multi_worker, parameter_server: the cluster of TF_CONFIG")
  p.add_argument("--min_shard_bytes", type=int, default=256 << 10,
                 help="parameter_server: variables larger than this are split over the ps tasks")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                 help="1: the Keras progress bar; 2: one line per epoch (for log files)")
  return p.parse_args(argv)


def main(argv=None):
  history = train(parse_args(argv))
  print(json.dumps({**{k: v[-1] for k, v in history.items()},
                    "epochs": len(next(iter(history.values()), []))}))


if __name__ == "__main__":
  main()
