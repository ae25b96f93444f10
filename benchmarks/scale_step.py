"""One step of bench-scale in a process of its own, whose memory goes back to the machine when
it exits: at 10M items an export peaks at 13 GB and two loaded exports at several more, while
the server being measured needs 9+ GB (benchmarks/scale.py runs every step through here).

  python -m benchmarks.scale_step export --work_dir=W --size=N --servable=retriever \
      --index=scann --top_k=100 --seed=0 --out=PATH
  python -m benchmarks.scale_step recall --work_dir=W --scann=PATH --exact=PATH --users=100
  python -m benchmarks.scale_step start --work_dir=W --size=N --seed=0 --out=DIR [--lazy_adam]

export: bench-serving's trained model (in --work_dir) over a catalog of --size items (the
trained ones, then synthetic ones: benchmarks.serving.padded_catalog for the index,
padded_model for a user tower's item table), saved as one servable of
`serving.export --servable`. recall: the ScaNN export's top K against the exact one's.
start: the online trainer's first model at that size: DIR/data (W's build with a catalog of
--size items) and DIR/run (padded_model with Adam's state, as tfkf.train saves it), the
--init_data_dir and --init_model_dir of online.train (bench-freshness --catalog_size).
Each prints one JSON line: {"seconds": build + save}, {"recall": mean recall@K} or the
start's {"data_dir", "model_dir", "seconds"}.
"""

import argparse
import dataclasses
import json
import os
import shutil
import time

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import pandas as pd
import tensorflow as tf

from benchmarks import serving as bench_serving
from serving import export as exporter, verify
from serving.retriever import DEFAULT_MAX_HISTORY_LENGTH
from tfkf import data_files, features
from tfkf.catalog import Catalog
from tfkf.checkpoint import CONFIG_FILE, WEIGHTS, build_model, config_json, load_trained, read_config


def padded_model(model, catalog: Catalog, item_ids: np.ndarray, seed: int):
  """(model, catalog) of the trained model over the catalog `item_ids` (the trained items
  first): a user tower over a catalog of that size holds an item table of that size. The
  synthetic rows of the (tied) item table are trained rows plus noise, their side features
  a trained item's; every other weight is the trained model's."""
  extra = len(item_ids) - catalog.num_items
  rng = np.random.default_rng(seed)
  source = rng.integers(features.NUM_RESERVED_IDS, catalog.num_items, extra)
  grow = lambda a, fill=None: np.concatenate([a, a[source] if fill is None else np.full(extra, fill, a.dtype)])
  padded = dataclasses.replace(
      catalog, item_ids=item_ids, tag=grow(catalog.tag), author=grow(catalog.author),
      duration=grow(catalog.duration),
      sampling_probability=grow(catalog.sampling_probability, catalog.sampling_probability.min()),
      vocab_sizes={**catalog.vocab_sizes, "item": len(item_ids)})
  big = type(model)(model.config, padded).build_towers()
  table = model.token_embedding.item_table.embeddings
  for target, weight in zip(big.weights, model.weights):
    if weight is table:
      trained = weight.numpy()
      noise = rng.standard_normal((extra, trained.shape[1])).astype(np.float32) * (0.3 * trained.std(axis=0))
      target.assign(np.concatenate([trained, trained[source] + noise]))
    elif target.shape == weight.shape:
      target.assign(weight)
  return big, padded


def write_vocabulary(item_ids: np.ndarray, path: str) -> str:
  """The Beam job's vocab/item.txt for `item_ids` (one raw id per real item, in index order)."""
  with open(path, "w") as f:
    f.write("\n".join(item_ids[features.NUM_RESERVED_IDS:]) + "\n")
  return path


def export(a) -> dict:
  data_dir, model_dir = os.path.join(a.work_dir, "data"), os.path.join(a.work_dir, "run")
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  item_ids, embeddings = bench_serving.padded_catalog(catalog, model.item_embeddings().numpy(),
                                                      a.size, a.seed)
  if a.servable == "user_tower":
    model, catalog = padded_model(model, catalog, item_ids, a.seed)
  else:  # an index needs only the ids: no 10M-row model beside its build
    catalog = dataclasses.replace(catalog, item_ids=item_ids)
  vocab = os.path.join(data_dir, "vocab", "item.txt")  # the whole export: synthetic items
  if a.servable != "retriever":  # are retrievable, unknown as history (as bench-serving's)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)  # the split ones know every item by id
    vocab = write_vocabulary(item_ids, os.path.join(os.path.dirname(a.out), "item.txt"))
  start = time.perf_counter()
  module, signatures = exporter.serving_module(a.servable, model, catalog, vocab, a.index, a.top_k,
                                               True, DEFAULT_MAX_HISTORY_LENGTH, embeddings)
  tf.saved_model.save(module, a.out, signatures=signatures, options=exporter.SAVE_OPTIONS)
  return {"seconds": time.perf_counter() - start}


def recall(a) -> dict:
  """Mean share of the exact top K that ScaNN returns, one user per call (a brute-force call
  over 10M items scores [interests, 10M])."""
  data_dir = os.path.join(a.work_dir, "data")
  max_len = read_config(os.path.join(a.work_dir, "run")).max_len
  raw = verify.raw_histories(verify.sample_histories(data_dir, max_len, a.users), Catalog.load(data_dir))
  ann, exact = (bench_serving.load_signature(p) for p in (a.scann, a.exact))
  shares = []
  for history in raw:
    found = np.asarray(ann(item_ids=history[None])["item_ids"])[0]
    truth = np.asarray(exact(item_ids=history[None])["item_ids"])[0]
    shares.append(len(set(found) & set(truth)) / len(truth))
  return {"recall": float(np.mean(shares))}


def start(a) -> dict:
  """W's data and trained model over a catalog of --size items, as the online trainer's start."""
  began = time.perf_counter()
  data_dir, model_dir = os.path.join(a.work_dir, "data"), os.path.join(a.work_dir, "run")
  out_data, out_run = os.path.join(a.out, "data"), os.path.join(a.out, "run")
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  item_ids = bench_serving.padded_item_ids(catalog, a.size)
  big, padded = padded_model(model, catalog, item_ids, a.seed)
  shutil.copytree(data_dir, out_data)
  write_vocabulary(item_ids, os.path.join(out_data, data_files.vocab_path("item")))
  counts = pd.read_csv(os.path.join(data_dir, data_files.CATALOG), usecols=["count"])["count"].to_numpy()
  counts = np.concatenate([np.zeros(features.NUM_RESERVED_IDS, np.int64), counts,
                           np.zeros(len(item_ids) - catalog.num_items, np.int64)])
  real = padded.real_items
  columns = {"index": np.arange(padded.num_items)[real], "item_id": item_ids[real],
             "tag": padded.tag[real], "author": padded.author[real],
             "duration_bucket": padded.duration[real], "count": counts[real],
             "sampling_probability": padded.sampling_probability[real]}
  with open(os.path.join(out_data, data_files.CATALOG), "w") as f:
    f.write(data_files.catalog_csv(columns))
  metadata = data_files.read_metadata(data_dir)
  metadata["vocab_sizes"]["item"] = padded.num_items
  with open(os.path.join(out_data, data_files.METADATA), "w") as f:
    f.write(data_files.metadata_json(metadata))
  config = model.config.replace(lazy_adam=a.lazy_adam)
  trainable = build_model(config, padded, learning_rate=1e-3)  # Adam's slots, as tfkf.train saves
  for target, weight in zip(trainable.weights, big.weights):
    target.assign(weight)
  trainable.save_weights(os.path.join(out_run, WEIGHTS))
  with open(os.path.join(out_run, CONFIG_FILE), "w") as f:
    f.write(config_json(config))
  return {"data_dir": out_data, "model_dir": out_run, "seconds": time.perf_counter() - began}


STEPS = {"export": export, "recall": recall, "start": start}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("step", choices=sorted(STEPS))
  p.add_argument("--work_dir", required=True, help="bench-serving's --work_dir (data/, run/)")
  p.add_argument("--size", type=int, help="export, start: real items in the catalog")
  p.add_argument("--servable", choices=exporter.SERVABLES, default="retriever")
  p.add_argument("--index", choices=["scann", "brute_force"], default="scann")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="export: the SavedModel directory; start: the new data/ and run/'s parent")
  p.add_argument("--scann", help="recall: the ScaNN export")
  p.add_argument("--exact", help="recall: the brute-force export")
  p.add_argument("--users", type=int, default=100, help="recall: test histories")
  p.add_argument("--lazy_adam", action="store_true",
                 help="start: the model continues with LazyAdam (only the batch's rows move)")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  print(json.dumps(STEPS[a.step](a)), flush=True)


if __name__ == "__main__":
  main()
