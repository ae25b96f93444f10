"""make bench-train: training throughput and cost of sequence length and compression.

Variants with the same d, L, k (the paper preset): 64 events plain, 256 events
plain, 256 events compressed (the paper's windows). Every history is full, the
batch is held fixed in memory (input pipeline excluded), and the variants run
interleaved, --repeats rounds each; medians are reported with ratios to
"64 plain" beside a FLOPs model of the user tower.

  python -m benchmarks.train_cost --batch_size 256 --steps 20 --repeats 3
"""

import argparse
import statistics
import time

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from benchmarks import common
from tfkf import features
from tfkf.catalog import Catalog
from tfkf.config import PRESETS, KuaiFormerConfig
from tfkf.model import KuaiFormer

NUM_ITEMS = 20_000


def variants():
  paper = PRESETS["paper"]
  return {"64 plain": paper.replace(max_len=64, compression_windows=()),
          "256 plain": paper.replace(max_len=256, compression_windows=()),
          "256 compressed": paper}


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


def flops(c: KuaiFormerConfig) -> float:
  """Multiply-adds x2 of the user tower's transformer blocks for one history (the token
  MLP and element-wise attention work are not counted)."""
  def block(tokens, batch=1):
    proj = 4 * tokens * c.d_model * c.d_model          # q, k, v, out
    attn = 2 * tokens * tokens * c.d_model             # logits and weighted sum
    ffn = 3 * tokens * c.d_model * c.ffn_dim           # gate, up, down
    return 2 * batch * (proj + attn + ffn)
  main = c.num_layers * block(c.num_sequence_tokens)
  compressor = sum(block(w) for w in c.compression_windows)
  return float(main + compressor)


class StepTimer(tf.keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.times = []

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def measure(model, config, batch_size, steps) -> dict:
  data = tf.data.Dataset.from_tensors(batch(config, batch_size)).repeat()
  timer = StepTimer()
  model.fit(data, steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[timer])
  step = statistics.median(timer.times[2:])  # the first steps include tracing
  one = {k: v[:1] for k, v in batch(config, 1, seed=1).items()}
  call = tf.function(lambda b: model(b))
  call(one)
  latencies = []
  for _ in range(30):
    start = time.perf_counter()
    call(one).numpy()
    latencies.append(time.perf_counter() - start)
  return {"train_step_s": step, "infer_one_user_s": statistics.median(latencies)}


def run(args) -> dict:
  tf.keras.utils.set_random_seed(args.seed)
  configs = variants()
  models = {}
  for name, config in configs.items():
    models[name] = KuaiFormer(config, catalog()).build_towers()
    models[name].compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  rounds = {name: [] for name in configs}
  for _ in range(args.repeats):
    for name, config in configs.items():
      rounds[name].append(measure(models[name], config, args.batch_size, args.steps))
  base = None
  results = {}
  for name, config in configs.items():
    step = statistics.median(r["train_step_s"] for r in rounds[name])
    infer = statistics.median(r["infer_one_user_s"] for r in rounds[name])
    results[name] = {"sequence_tokens": config.num_sequence_tokens, "flops_per_user": flops(config),
                     "train_step_s": step, "train_examples_per_s": args.batch_size / step,
                     "infer_one_user_ms": infer * 1e3, "rounds": rounds[name]}
    base = base or results[name]
  for r in results.values():
    r["train_cost_vs_64_plain"] = r["train_step_s"] / base["train_step_s"]
    r["infer_cost_vs_64_plain"] = r["infer_one_user_ms"] / base["infer_one_user_ms"]
    r["flops_vs_64_plain"] = r["flops_per_user"] / base["flops_per_user"]
  return {"seed": args.seed, "batch_size": args.batch_size, "steps": args.steps,
          "repeats": args.repeats, "config": PRESETS["paper"].to_json(),
          "versions": common.versions("tensorflow", "tf-keras", "tensorflow-recommenders"),
          "variants": results,
          "paper_anchor": {"256 plain": 6.0, "256 compressed": 1.1}}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None, help="default: benchmarks/results/train_cost.json")
  args = p.parse_args(argv)
  print(common.write("train_cost", run(args), args.output))


if __name__ == "__main__":
  main()
