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
    call (there must be none).
Over the sizes, each cost's growth: the slope of log(cost) against log(items) (1 = linear).

  python -m benchmarks.scale --catalogs 1000000,3000000,10000000 --concurrency 1,32
"""

import argparse
import gc
import json
import os
import shutil
import sys
import threading
import time
import urllib.request

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from benchmarks import common, serving as bench_serving
from serving import verify
from tfkf.catalog import Catalog
from tfkf.checkpoint import load_trained

MODEL = "kuaiformer"
GROWTH = ("export_s", "saved_model_bytes", "server_rss_bytes", "swap_s")


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def rss_bytes(pid: int) -> int:
  """Resident memory of process `pid` (Linux /proc)."""
  with open(f"/proc/{pid}/status") as f:
    return 1024 * int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))


def version_states(port: int) -> dict:
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=10) as r:
    return {int(s["version"]): s["state"] for s in json.load(r)["model_version_status"]}


class Caller(threading.Thread):
  """A client calling REST predict back to back until stopped: its calls and failures, and
  the server's peak RSS sampled between calls."""

  def __init__(self, port: int, bodies, pid: int):
    super().__init__(daemon=True)
    self.url, self.bodies, self.pid = bench_serving.predict_url(port), bodies, pid
    self.calls, self.failures, self.peak_rss = 0, [], rss_bytes(pid)
    self.stop = threading.Event()

  def run(self):
    while not self.stop.is_set():
      try:
        request = urllib.request.Request(self.url, data=self.bodies[self.calls % len(self.bodies)],
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
      except Exception as e:  # any failure at all is what a swap must not cause
        self.failures.append(f"{type(e).__name__}: {e}")
      self.calls += 1
      self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))


def swap(base: str, staged: str, version: int, port: int, timeout_s: float = 1800) -> float:
  """Renames `staged` to version `version` of `base`: seconds until the server has it AVAILABLE."""
  landed = time.perf_counter()
  os.rename(staged, os.path.join(base, str(version)))
  while version_states(port).get(version) != "AVAILABLE":
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
    caller = Caller(port, bodies, process.pid)
    caller.start()
    try:
      row["swap_s"] = swap(base, staged, 2, port)
      time.sleep(args.after_swap_s)  # calls keep going while version 1 is unloaded
    finally:
      caller.stop.set()
      caller.join()
    row["refresh"] = {"calls": caller.calls, "failed": len(caller.failures),
                      "failures": caller.failures[:5], "server_peak_rss_bytes": caller.peak_rss}
  row["refresh_s"] = row["refresh_export_s"] + row["swap_s"]
  shutil.rmtree(work)
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
