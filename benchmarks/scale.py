"""make bench-scale: what a catalog of 1M, 3M and 10M items costs to export, serve and refresh.

bench-serving's trained model (its --work_dir; built and trained there if missing) with its
item embeddings padded to each --catalogs size by synthetic items around the trained ones
(benchmarks.serving.padded_catalog). Every export and the recall check run in a process of
their own (benchmarks/scale_step.py), which gives its memory back before the server needs it.
For each size:
  * export: seconds to build the ScaNN index and save the SavedModel, and its bytes on disk;
  * recall@K: the ScaNN signature's top K against a brute-force export's (exact), on
    --recall_users histories;
  * server: serving.server on the ScaNN version (batching off): its RSS once loaded, and p50 /
    p99 over REST (wrk) at each --concurrency;
  * refresh: the next version renamed into the server's base while a client keeps calling:
    seconds from the rename until it is AVAILABLE, the server's peak RSS meanwhile (two
    versions loaded), and every failed call (there must be none). A refresh exports the same
    servable at the same size again (as the online trainer's export does), so the next
    version is version 1's files (hard links) and version 1's export seconds stand for its
    export: refresh = export + swap;
  * split (--split, default): the same model as two servables of one server
    (serving.export --servable=user_tower|item_index, deploy/split/models.config), the tower
    over an item table of the catalog's size (scale_step.padded_model): each one's export
    seconds and bytes, the server's RSS, p50 / p99 of the two calls (tower, then index) one
    user at a time, and a new tower version swapped in under load while the index keeps its
    version, then a new index version (each version 1's files again, as above): each
    refresh = its export + swap, with every failed call.
Over the sizes, each cost's growth: the slope of log(cost) against log(items) (1 = linear).

  python -m benchmarks.scale --catalogs 1000000,3000000,10000000 --concurrency 1,32
"""

import argparse
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

from benchmarks import common, serving as bench_serving
from serving import client, verify
from tfkf import features
from tfkf.catalog import Catalog
from tfkf.checkpoint import read_config

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


def step(args, *flags: str) -> dict:
  """One benchmarks.scale_step in a process of its own: the JSON line it prints."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.scale_step", *flags,
                         f"--work_dir={args.work_dir}", f"--top_k={args.top_k}", f"--seed={args.seed}"],
                        cwd=common.ROOT, env=common.module_env(), capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"scale_step {' '.join(flags)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def exported(args, size: int, out: str, servable: str = "retriever", index: str = "scann") -> float:
  """Seconds to build and save one servable over `size` items (scale_step export)."""
  return step(args, "export", f"--size={size}", f"--servable={servable}", f"--index={index}",
              f"--out={out}")["seconds"]


def next_version(version_dir: str) -> str:
  """A staged next version beside `version_dir`: its files, hard-linked (an export's files are
  never written again). Staged before the server starts, as an export would be: at 10M items an
  exporter (13 GB) and a server swapping two versions (2 x 9 GB) do not fit in 24 GB together."""
  staged = os.path.join(os.path.dirname(version_dir), ".staging-2")
  shutil.copytree(version_dir, staged, copy_function=os.link)
  return staged


def measure_size(args, items: int, bodies, bodies_file, size: int) -> dict:
  work = os.path.join(args.work_dir, "scale", str(size))
  shutil.rmtree(work, ignore_errors=True)
  base, exact = os.path.join(work, "models"), os.path.join(work, "brute_force")
  row = {"items": items, "export_s": exported(args, size, os.path.join(base, "1"))}
  row["saved_model_bytes"] = directory_bytes(os.path.join(base, "1"))
  exported(args, size, exact, index="brute_force")
  row["exact_export_bytes"] = directory_bytes(exact)
  row[f"recall@{args.top_k}"] = step(args, "recall", f"--scann={os.path.join(base, '1')}",
                                     f"--exact={exact}", f"--users={args.recall_users}")["recall"]
  shutil.rmtree(exact)
  staged = next_version(os.path.join(base, "1"))
  with bench_serving.served(base, os.path.join(work, "server.log")) as (port, _, process):
    row["server_rss_bytes"] = rss_bytes(process.pid)
    row["latency"] = {str(c): bench_serving.wrk(bench_serving.predict_url(port), bodies_file, c,
                                                args.seconds) for c in args.concurrency}
    caller = Caller(rest_caller(port, bodies), process.pid)
    row["swap_s"] = swap_under_load(caller, base, staged, port, args.after_swap_s)
    row["refresh"] = caller.record()
  row["refresh_s"] = row["export_s"] + row["swap_s"]
  shutil.rmtree(work)
  if args.split:
    row["split"] = measure_split(args, bodies, size, work)
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


def served_split(base: str, log_path: str):
  """bench_serving.served on deploy/split/models.config with its models under `base`."""
  return bench_serving.served(None, log_path, f"--model_config_file={common.split_config(base)}",
                              "--file_system_poll_wait_seconds=1", models=SPLIT)


def split_latency(port: int, histories, seconds: float) -> dict:
  """One user at a time, back to back: the tower call, then the index call."""
  latencies, deadline = [], time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    client.rest_split_predict("127.0.0.1", port, [histories[len(latencies) % len(histories)]])
    latencies.append(time.perf_counter() - start)
  return bench_serving.percentiles(latencies)


def measure_split(args, bodies, size: int, work: str) -> dict:
  """The user tower (over an item table of the catalog's size) and the item index as two
  servables of one server: each one's export seconds and bytes, the server's RSS, the
  two-call latency at concurrency 1, then a new tower version swapped in under load while the
  index keeps serving, then a new index version the same way."""
  base = os.path.join(work, "split")
  path = lambda kind, version: os.path.join(base, kind, str(version))
  row = {}
  for kind in SPLIT:
    row[f"{kind}_export_s"] = exported(args, size, path(kind, 1), servable=kind)
    row[f"{kind}_bytes"] = directory_bytes(path(kind, 1))
  staged = {kind: next_version(path(kind, 1)) for kind in SPLIT}
  histories = [json.loads(b)["instances"][0]["item_ids"] for b in bodies]
  with served_split(base, os.path.join(work, "split_server.log")) as (port, _, process):
    row["server_rss_bytes"] = rss_bytes(process.pid)
    for history in histories[:10]:  # warm up, as a version's warmup requests would
      client.rest_split_predict("127.0.0.1", port, [history])
    row["latency_c1"] = split_latency(port, histories, args.seconds)
    call = lambda n: client.rest_split_predict("127.0.0.1", port, [histories[n % len(histories)]])
    for kind, name in (("user_tower", "tower"), ("item_index", "index")):  # each in turn
      caller = Caller(call, process.pid)
      row[f"{name}_swap_s"] = swap_under_load(caller, os.path.join(base, kind), staged[kind], port,
                                              args.after_swap_s, model=kind)
      row[f"{name}_refresh"] = caller.record()
      if kind == "user_tower":  # the index kept serving its version through the tower's swap
        row["index_versions"] = sorted(version_states(port, "item_index"))
  for kind, name in (("user_tower", "tower"), ("item_index", "index")):
    row[f"{name}_refresh_s"] = row[f"{kind}_export_s"] + row[f"{name}_swap_s"]
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
  catalog = Catalog.load(data_dir)  # the model itself is loaded by each step's process only
  raw = verify.raw_histories(verify.sample_histories(data_dir, read_config(model_dir).max_len,
                                                     args.users), catalog)
  bodies = [json.dumps({"instances": [{"item_ids": [x.decode() for x in h if x]}]}).encode() for h in raw]
  os.makedirs(args.work_dir, exist_ok=True)
  bodies_file = os.path.join(args.work_dir, "scale_bodies.jsonl")
  with open(bodies_file, "wb") as f:
    f.write(b"\n".join(bodies) + b"\n")
  rows = []
  for size in args.catalogs:
    items = max(size, catalog.num_items - features.NUM_RESERVED_IDS)
    rows.append(measure_size(args, items, bodies, bodies_file, size))
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
      "command": common.command("benchmarks.scale", argv),
      "versions": common.versions("tensorflow", "scann"), "seed": args.seed,
      "top_k": args.top_k, "seconds": args.seconds, **result}, args.output)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
