"""make bench-scale: what a catalog of 1M, 3M and 10M items costs to export, serve and refresh.

bench-serving's trained model (its --work_dir; built and trained there if missing) with its
item embeddings padded to each --catalogs size by synthetic items around the trained ones
(benchmarks.serving.padded_catalog). For each size:
  * export: seconds to build the ScaNN index and save the SavedModel, and its bytes on disk;
  * recall@K: the ScaNN signature's top K against a brute-force export's (exact), on
    --recall_users histories;
  * server: serving.server on the ScaNN version (batching off): its RSS once loaded, and p50 /
    p99 over REST (wrk) at each --concurrency;
  * refresh: the next version (its index built again, as the online trainer's export does)
    renamed into the server's base while a client keeps calling: seconds from the rename until
    it is AVAILABLE, the server's peak RSS meanwhile (two versions loaded), and every failed
    call (there must be none);
  * split (--split, default): the same model as two servables of one server
    (serving.export --servable=user_tower|item_index, deploy/split/models.config), the tower
    over an item table of the catalog's size (padded_model): each one's export seconds and
    bytes, the server's RSS, p50 / p99 of the two calls (tower, then index) one user at a
    time, and a new tower version swapped in under load while the index keeps its version:
    tower refresh = its export + swap, with every failed call.
Over the sizes, each cost's growth: the slope of log(cost) against log(items) (1 = linear).

  python -m benchmarks.scale --catalogs 1000000,3000000,10000000 --concurrency 1,32
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from benchmarks import common, serving as bench_serving
from serving import client, export as exporter, verify
from serving.retriever import DEFAULT_MAX_HISTORY_LENGTH
from tfkf import features
from tfkf.catalog import Catalog
from tfkf.checkpoint import load_trained

MODEL = "kuaiformer"
SPLIT = ("user_tower", "item_index")  # deploy/split/models.config's models
GROWTH = ("export_s", "saved_model_bytes", "server_rss_bytes", "swap_s")


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def rss_bytes(pid: int) -> int:
  """Resident memory of process `pid` (Linux /proc)."""
  with open(f"/proc/{pid}/status") as f:
    return 1024 * int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))


def version_states(port: int, model: str = MODEL) -> dict:
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{model}", timeout=10) as r:
    return {int(s["version"]): s["state"] for s in json.load(r)["model_version_status"]}


class Caller(threading.Thread):
  """A client calling `call(n)` (the n-th call) back to back until stopped: its calls and
  failures, and the server's peak RSS sampled between calls."""

  def __init__(self, call, pid: int):
    super().__init__(daemon=True)
    self.call, self.pid = call, pid
    self.calls, self.failures, self.peak_rss = 0, [], rss_bytes(pid)
    self.stop = threading.Event()

  def run(self):
    while not self.stop.is_set():
      try:
        self.call(self.calls)
      except Exception as e:  # any failure at all is what a swap must not cause
        self.failures.append(f"{type(e).__name__}: {e}")
      self.calls += 1
      self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))

  def record(self) -> dict:
    return {"calls": self.calls, "failed": len(self.failures), "failures": self.failures[:5],
            "server_peak_rss_bytes": self.peak_rss}


def rest_caller(port: int, bodies):
  """call(n): REST predict of the one-model export with the n-th body."""
  url = bench_serving.predict_url(port)
  def call(n):
    request = urllib.request.Request(url, data=bodies[n % len(bodies)],
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
  return call


def swap(base: str, staged: str, version: int, port: int, timeout_s: float = 1800,
         model: str = MODEL) -> float:
  """Renames `staged` to version `version` of `base`: seconds until the server has it AVAILABLE."""
  landed = time.perf_counter()
  os.rename(staged, os.path.join(base, str(version)))
  while version_states(port, model).get(version) != "AVAILABLE":
    if time.perf_counter() - landed > timeout_s:
      raise TimeoutError(f"version {version} not AVAILABLE after {timeout_s} s")
    time.sleep(0.1)
  return time.perf_counter() - landed


def recall_at_k(scann_signature, exact_signature, raw) -> float:
  """Mean share of the exact top K that ScaNN returns, one user per call (a brute-force call
  over 10M items scores [interests, 10M])."""
  recall = []
  for history in raw:
    ann = np.asarray(scann_signature(item_ids=history[None])["item_ids"])[0]
    exact = np.asarray(exact_signature(item_ids=history[None])["item_ids"])[0]
    recall.append(len(set(ann) & set(exact)) / len(exact))
  return float(np.mean(recall))


def measure_size(args, model, data_dir, catalog, raw, bodies, bodies_file, size: int) -> dict:
  item_ids, embeddings = bench_serving.padded_catalog(catalog, model.item_embeddings().numpy(),
                                                      size, args.seed)
  work = os.path.join(args.work_dir, "scale", str(size))
  shutil.rmtree(work, ignore_errors=True)
  base, exact = os.path.join(work, "models"), os.path.join(work, "brute_force")
  export = lambda index, path: bench_serving.export(model, data_dir, item_ids, embeddings, index,
                                                    args.top_k, path)
  row = {"items": len(item_ids) - 2, "export_s": export("scann", os.path.join(base, "1"))}
  row["saved_model_bytes"] = directory_bytes(os.path.join(base, "1"))
  export("brute_force", exact)
  row["exact_export_bytes"] = directory_bytes(exact)
  row[f"recall@{args.top_k}"] = recall_at_k(bench_serving.load_signature(os.path.join(base, "1")),
                                            bench_serving.load_signature(exact), raw)
  shutil.rmtree(exact)
  gc.collect()  # the two loaded SavedModels: at 10M items, GBs the server will need
  with bench_serving.served(base, os.path.join(work, "server.log")) as (port, _, process):
    row["server_rss_bytes"] = rss_bytes(process.pid)
    row["latency"] = {str(c): bench_serving.wrk(bench_serving.predict_url(port), bodies_file, c,
                                                args.seconds) for c in args.concurrency}
    staged = os.path.join(base, ".staging-2")
    row["refresh_export_s"] = export("scann", staged)
    caller = Caller(rest_caller(port, bodies), process.pid)
    row["swap_s"] = swap_under_load(caller, base, staged, port, args.after_swap_s)
    row["refresh"] = caller.record()
  row["refresh_s"] = row["refresh_export_s"] + row["swap_s"]
  shutil.rmtree(work)
  if args.split:
    gc.collect()
    row["split"] = measure_split(args, model, data_dir, catalog, item_ids, embeddings, raw, work)
    shutil.rmtree(work)
  return row


def swap_under_load(caller: Caller, base: str, staged: str, port: int, after_swap_s: float,
                    model: str = MODEL) -> float:
  """swap() while `caller` keeps calling, and `after_swap_s` more while the old version unloads."""
  caller.start()
  try:
    seconds = swap(base, staged, 2, port, model=model)
    time.sleep(after_swap_s)
  finally:
    caller.stop.set()
    caller.join()
  return seconds


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


def save_servable(kind: str, model, catalog: Catalog, vocab: str, embeddings, args, path: str) -> float:
  """Saves one servable of serving.export --servable=`kind`: seconds to build and save it."""
  start = time.perf_counter()
  module, signatures = exporter.serving_module(kind, model, catalog, vocab, "scann", args.top_k,
                                               True, DEFAULT_MAX_HISTORY_LENGTH, embeddings)
  tf.saved_model.save(module, path, signatures=signatures, options=exporter.SAVE_OPTIONS)
  return time.perf_counter() - start


@contextlib.contextmanager
def served_split(base: str, log_path: str):
  """(REST port, process) of a serving.server on deploy/split/models.config with its models
  under `base`, stopped on exit."""
  with open(os.path.join(common.ROOT, "deploy", "split", "models.config")) as f:
    config = f.read().replace("/models/", base.rstrip("/") + "/")
  config_path = os.path.join(base, "models.config")
  with open(config_path, "w") as f:
    f.write(config)
  port = common.free_port()
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": common.ROOT}
  process = subprocess.Popen([sys.executable, "-m", "serving.server", f"--model_config_file={config_path}",
                              f"--rest_api_port={port}", f"--port={common.free_port()}", "--num_threads=32",
                              "--file_system_poll_wait_seconds=1"], cwd=common.ROOT, env=env,
                             stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
  try:
    for model in SPLIT:
      client.wait_until_available("127.0.0.1", port, model, timeout_s=600)
    yield port, process
  finally:
    process.terminate()
    process.wait(timeout=60)


def split_latency(port: int, histories, seconds: float) -> dict:
  """One user at a time, back to back: the tower call, then the index call."""
  latencies, deadline = [], time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    client.rest_split_predict("127.0.0.1", port, [histories[len(latencies) % len(histories)]])
    latencies.append(time.perf_counter() - start)
  return bench_serving.percentiles(latencies)


def measure_split(args, model, data_dir, catalog, item_ids, embeddings, raw, work) -> dict:
  """The user tower (over an item table of the catalog's size) and the item index as two
  servables of one server: each one's export seconds and bytes, the server's RSS, the
  two-call latency at concurrency 1, and a new tower version swapped in under load while the
  index keeps serving."""
  big, padded = padded_model(model, catalog, item_ids, args.seed)
  os.makedirs(work, exist_ok=True)
  vocab = write_vocabulary(item_ids, os.path.join(work, "item.txt"))
  base = os.path.join(work, "split")
  path = lambda kind, version: os.path.join(base, kind, str(version))
  row = {}
  for kind in SPLIT:
    row[f"{kind}_export_s"] = save_servable(kind, big, padded, vocab, embeddings, args, path(kind, 1))
    row[f"{kind}_bytes"] = directory_bytes(path(kind, 1))
  histories = [[x.decode() for x in h if x] for h in raw]
  with served_split(base, os.path.join(work, "split_server.log")) as (port, process):
    row["server_rss_bytes"] = rss_bytes(process.pid)
    for history in histories[:10]:  # warm up, as a version's warmup requests would
      client.rest_split_predict("127.0.0.1", port, [history])
    row["latency_c1"] = split_latency(port, histories, args.seconds)
    staged = os.path.join(base, "user_tower", ".staging-2")
    row["tower_refresh_export_s"] = save_servable("user_tower", big, padded, vocab, None, args, staged)
    call = lambda n: client.rest_split_predict("127.0.0.1", port, [histories[n % len(histories)]])
    caller = Caller(call, process.pid)
    row["tower_swap_s"] = swap_under_load(caller, os.path.join(base, "user_tower"), staged, port,
                                          args.after_swap_s, model="user_tower")
    row["tower_refresh"] = caller.record()
    row["index_versions"] = sorted(version_states(port, "item_index"))
  row["tower_refresh_s"] = row["tower_refresh_export_s"] + row["tower_swap_s"]
  return row


def growth(rows: list) -> dict:
  """Per cost, the slope of log(cost) against log(items) over the sizes (1 = linear)."""
  if len(rows) < 2:
    return {}
  items = np.log([r["items"] for r in rows])
  costs = {name: [r[name] for r in rows] for name in GROWTH}
  for c in rows[0]["latency"]:
    costs[f"p99_ms_c{c}"] = [r["latency"][c]["p99_ms"] for r in rows]
  return {name: float(np.polyfit(items, np.log(values), 1)[0]) for name, values in costs.items()}


def run(args) -> dict:
  data_dir, model_dir = bench_serving.prepare(args)
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  raw = verify.raw_histories(verify.sample_histories(data_dir, model.config.max_len, args.users), catalog)
  bodies = [json.dumps({"instances": [{"item_ids": [x.decode() for x in h if x]}]}).encode() for h in raw]
  os.makedirs(args.work_dir, exist_ok=True)
  bodies_file = os.path.join(args.work_dir, "scale_bodies.jsonl")
  with open(bodies_file, "wb") as f:
    f.write(b"\n".join(bodies) + b"\n")
  rows = []
  for size in args.catalogs:
    rows.append(measure_size(args, model, data_dir, catalog, raw[:args.recall_users], bodies,
                             bodies_file, size))
    print(json.dumps(rows[-1]), flush=True)
  return {"sizes": rows, "growth": growth(rows)}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ints = lambda s: [int(x) for x in s.split(",")]
  p.add_argument("--catalogs", type=ints, default=[1_000_000, 3_000_000, 10_000_000])
  p.add_argument("--concurrency", type=ints, default=[1, 32])
  p.add_argument("--seconds", type=int, default=8, help="per concurrency level (whole seconds: wrk's unit)")
  p.add_argument("--users", type=int, default=512, help="distinct test histories sent")
  p.add_argument("--recall_users", type=int, default=100)
  p.add_argument("--after_swap_s", type=float, default=2.0)
  p.add_argument("--split", type=lambda v: v.lower() != "false", default=True,
                 help="also measure the user tower and item index as two servables (true)")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  bench_serving.add_model_flags(p)  # bench-serving's model, cached in --work_dir
  p.add_argument("--output", default=None)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  result = run(args)
  path = common.write("scale", {
      "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:]),
      "versions": common.versions("tensorflow", "scann"), "seed": args.seed,
      "top_k": args.top_k, "seconds": args.seconds, **result}, args.output)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
