"""make bench-cost: training and single-user inference cost against history length.

Variants with the same d, L, k (--preset, the paper's by default): plain
histories of each of --lengths events, and --compressed_len events compressed
with the paper's windows. Every history is full and each batch is held fixed in
memory (input pipeline excluded). Each variant trains in two modes: "last" (one
target per history, --batch_size histories) and "every_event" (one target per
latest uncompressed event: 48 per compressed history, max_len per plain one;
--every_event_targets targets per step whatever the variant, so every variant's
in-batch softmax has as many candidates). The machine's speed drifts by tens
of percent within minutes, so the training steps run in rotation: each of
--rounds rounds times ONE step of every variant and mode in turn, and a ratio
to "64 plain" is the median over rounds of the ratio within the round, with its
bootstrap 95% interval. --repeats rounds of --calls calls of the user tower on
one history (a traced tf.function, as in the exported signature) time
inference. All beside a FLOPs model (`flops`) of the same work.

  python -m benchmarks.train_cost --batch_size 128 --rounds 24 --repeats 3
"""

import argparse
import statistics
import time

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from benchmarks import common
from tfkf import features
from tfkf.catalog import Catalog
from tfkf.config import PRESETS, KuaiFormerConfig
from tfkf.model import KuaiFormer

NUM_ITEMS = 20_000
BASELINE = "64 plain"
PAPER_ANCHOR = {"256 plain": 6.0, "256 compressed": 1.1}


def variants(preset: KuaiFormerConfig, lengths, compressed_len: int) -> dict:
  out = {f"{n} plain": preset.replace(max_len=n, compression_windows=()) for n in lengths}
  if compressed_len:
    out[f"{compressed_len} compressed"] = preset.replace(
        max_len=compressed_len, compression_windows=features.COMPRESSION_WINDOWS)
  return out


def catalog() -> Catalog:
  rng = np.random.default_rng(0)
  return Catalog(item_ids=np.array([str(i) for i in range(NUM_ITEMS)], object),
                 tag=rng.integers(2, 50, NUM_ITEMS), author=rng.integers(2, 500, NUM_ITEMS),
                 duration=rng.integers(1, 1001, NUM_ITEMS),
                 sampling_probability=np.full(NUM_ITEMS, 1.0 / NUM_ITEMS, np.float32),
                 vocab_sizes={"item": NUM_ITEMS, "tag": 50, "author": 500})


def batch(config: KuaiFormerConfig, size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  out = {features.HISTORY_ITEM: rng.integers(2, NUM_ITEMS, (size, config.max_len)),
         features.TARGET_ITEM: rng.integers(2, NUM_ITEMS, size)}
  for name in config.event_features:
    vocab = features.EVENT_FEATURES[name].vocab_size
    out[features.history_key(name)] = rng.integers(1, vocab, (size, config.max_len))
  return out


def flops(c: KuaiFormerConfig, batch_size: int) -> dict:
  """FLOPs (2 x multiply-adds) of the matrix products, per user.

  Forward of the user tower = token MLP over every event + the compressor's one
  shared block over every window + L causal blocks over the S + k tokens; a
  block over T tokens costs 4Td^2 (q, k, v, out) + 2T^2 d (logits, weighted sum)
  + 3Td f (gated FFN). A training step is ~3x the forward (backward ~2x) plus
  the candidate tower and the in-batch logits [b, b, k], which do not depend on
  the history length. `score_elements` counts the attention scores (heads x T^2
  per block) that masking and softmax touch element by element: cheap in FLOPs,
  but memory-bound on a CPU.
  """
  d, f, h = c.d_model, c.ffn_dim, c.num_heads
  token_in = d + c.feature_dim * (len(c.item_features) + len(c.event_features))

  def block(t):
    return 2 * (4 * t * d * d + 2 * t * t * d + 3 * t * d * f)

  mlp = 2 * c.max_len * (token_in * d + d * d)
  compressor = sum(block(w) for w in c.compression_windows)
  backbone = c.num_layers * block(c.num_sequence_tokens)
  forward = mlp + compressor + backbone
  candidate = 2 * (d + c.feature_dim * len(c.item_features)) * d + 2 * batch_size * c.num_query_tokens * d
  scores = h * (sum(w * w for w in c.compression_windows) + c.num_layers * c.num_sequence_tokens ** 2)
  return {"token_mlp": float(mlp), "compressor": float(compressor), "backbone": float(backbone),
          "forward": float(forward), "train_step": float(3 * (forward + candidate)),
          "score_elements": float(scores)}


def layers_for_ratio(c: KuaiFormerConfig, ratio: float, batch_size: int) -> float:
  """Backbone depth L at which the FLOPs model puts compressed / 64 plain at `ratio`."""
  plain = c.replace(max_len=64, compression_windows=())
  per = {name: flops(cfg.replace(num_layers=1), batch_size) for name, cfg in
         (("plain", plain), ("compressed", c))}
  fixed = {k: v["forward"] - v["backbone"] for k, v in per.items()}
  # ratio * (fixed_p + L b_p) = fixed_c + L b_c, solved for L.
  return ((fixed["compressed"] - ratio * fixed["plain"])
          / (ratio * per["plain"]["backbone"] - per["compressed"]["backbone"]))


def targets_per_example(config: KuaiFormerConfig) -> int:
  """Training targets of one full history: 1, or with every_event one per latest event."""
  if config.training_targets == "every_event":
    return config.num_latest_events
  return 1


class Trainer:
  """One model in one training mode, on one fixed batch of full histories."""

  def __init__(self, config: KuaiFormerConfig, batch_size: int):
    self.config, self.batch_size = config, batch_size
    self.model = KuaiFormer(config, catalog()).build_towers()
    self.model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    self.model.optimizer.build(self.model.trainable_variables)
    self.batches = iter(tf.data.Dataset.from_tensors(batch(config, batch_size)).repeat())
    self.train_function = self.model.make_train_function()  # what model.fit runs per step
    for _ in range(2):  # the trace, then the first run's allocations
      self.step_s()

  @property
  def targets_per_step(self) -> int:
    return self.batch_size * targets_per_example(self.config)

  def step_s(self) -> float:
    start = time.perf_counter()
    float(self.train_function(self.batches)["loss"])
    return time.perf_counter() - start


class Variant:
  """One history length: its trainers per training mode and its traced single-user call."""

  def __init__(self, config: KuaiFormerConfig, batch_size: int, every_event_targets: int):
    self.config = config
    every_event = config.replace(training_targets="every_event")
    self.trainers = {"last": Trainer(config, batch_size),
                     "every_event": Trainer(every_event, max(
                         1, every_event_targets // targets_per_example(every_event)))}
    self.model = self.trainers["last"].model
    self.one = {k: v[:1] for k, v in batch(config, 1, seed=1).items()
                if k != features.TARGET_ITEM}
    self.call = tf.function(lambda b: self.model(b))
    self.call(self.one)

  def infer_one_user_s(self, calls: int) -> float:
    latencies = []
    for _ in range(calls):
      start = time.perf_counter()
      self.call(self.one).numpy()
      latencies.append(time.perf_counter() - start)
    return statistics.median(latencies)


def paired_ratio(values, base) -> dict:
  """Median over rounds of values[r] / base[r], with its bootstrap 95% interval."""
  ratios = [v / b for v, b in zip(values, base)]
  return {"median": statistics.median(ratios), "ci95": common.median_ci95(ratios)}


def run(args) -> dict:
  tf.keras.utils.set_random_seed(args.seed)
  preset = PRESETS[args.preset]
  built = {name: Variant(c, args.batch_size, args.every_event_targets) for name, c in
           variants(preset, args.lengths, args.compressed_len).items()}
  steps = {name: {mode: [] for mode in v.trainers} for name, v in built.items()}
  for _ in range(args.rounds):
    for name, v in built.items():
      for mode, trainer in v.trainers.items():
        steps[name][mode].append(trainer.step_s())
  inference = {name: [] for name in built}
  for _ in range(args.repeats):
    for name, v in built.items():
      inference[name].append(v.infer_one_user_s(args.calls))
  per_target = {name: {mode: [s / v.trainers[mode].targets_per_step for s in times]
                       for mode, times in steps[name].items()} for name, v in built.items()}
  results = {}
  for name, v in built.items():
    modes = {}
    for mode, t in v.trainers.items():
      step = statistics.median(steps[name][mode])
      modes[mode] = {"batch_size": t.batch_size, "targets_per_step": t.targets_per_step,
                     "train_step_s": step, "targets_per_s": t.targets_per_step / step,
                     "cost_per_target_vs_64_plain": paired_ratio(
                         per_target[name][mode], per_target[BASELINE][mode]),
                     "step_s_rounds": steps[name][mode]}
    step = modes["last"]["train_step_s"]
    results[name] = {"max_len": v.config.max_len, "compressed": bool(v.config.compression_windows),
                     "sequence_tokens": v.config.num_sequence_tokens,
                     "flops": flops(v.config, args.batch_size), "train_step_s": step,
                     "train_examples_per_s": args.batch_size / step, "modes": modes,
                     "infer_one_user_ms": 1e3 * statistics.median(inference[name]),
                     "infer_one_user_s_rounds": inference[name],
                     "infer_vs_64_plain": paired_ratio(inference[name], inference[BASELINE])}
  base = results[BASELINE]
  for r in results.values():
    r["train_vs_64_plain"] = r["modes"]["last"]["cost_per_target_vs_64_plain"]
    r["flops_train_vs_64_plain"] = r["flops"]["train_step"] / base["flops"]["train_step"]
    r["flops_forward_vs_64_plain"] = r["flops"]["forward"] / base["flops"]["forward"]
    r["score_elements_vs_64_plain"] = r["flops"]["score_elements"] / base["flops"]["score_elements"]
  compressed = preset.replace(max_len=256, compression_windows=features.COMPRESSION_WINDOWS)
  return {"seed": args.seed, "preset": args.preset, "batch_size": args.batch_size,
          "every_event_targets": args.every_event_targets, "rounds": args.rounds,
          "calls": args.calls, "repeats": args.repeats, "config": preset.to_json(),
          "versions": common.versions("tensorflow", "tf-keras", "tensorflow-recommenders"),
          "variants": results, "paper_anchor": PAPER_ANCHOR,
          "layers_for_paper_compressed_ratio": layers_for_ratio(
              compressed, PAPER_ANCHOR["256 compressed"], args.batch_size)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
  p.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")],
                 default=[32, 64, 128, 256], help="plain variants; must include 64")
  p.add_argument("--compressed_len", type=int, default=256,
                 help="compressed variant (paper windows); 0: none")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--every_event_targets", type=int, default=768,
                 help="targets per step of every_event training: 16 compressed histories "
                      "(48 latest events each), 12 of 64 plain, ...")
  p.add_argument("--rounds", type=int, default=24,
                 help="rounds of one timed training step of every variant and mode in turn")
  p.add_argument("--calls", type=int, default=50, help="timed single-user calls per repeat")
  p.add_argument("--repeats", type=int, default=3, help="rounds of --calls inference calls")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None, help="default: benchmarks/results/cost.json")
  args = p.parse_args(argv)
  if 64 not in args.lengths:
    p.error("--lengths must include 64 (the baseline of the ratios)")
  print(common.write("cost", run(args), args.output))


if __name__ == "__main__":
  main()
