"""Freshness of online learning: seconds from a log file landing to a served model trained on it.

  python -m benchmarks.freshness --users 2000 --items 3000 --batches 6 --index scann

Builds and trains a first model on the initial log of beam_pipelines.synthetic_stream,
starts serving.server and online.train (--export_every_s=0: export after every
micro-batch), then lands the batch files one at a time, each after the previous
one is served. Per file: landing (its rename into the stream dir) -> the trainer
picks it up -> generation committed -> version exported (its
assets.extra/online.json) -> AVAILABLE on the server (REST status polled every
50 ms). A longer --export_every_s adds up to that many seconds of waiting.
Writes benchmarks/results/freshness.json. --prepared_dir reuses the stream/, data/
and run/ of an earlier run (the layout of --workdir) instead of making them anew.

At catalog scale (docs/scaling.md): --catalog_size=N starts the trainer from that
first model over N items (the trained ones, then synthetic ones:
benchmarks.scale_step start), and --servable=user_tower serves the split of
deploy/split/models.config, the trainer exporting the user tower per micro-batch
and the item index every --index_every_s; freshness is then the tower's.
--index_every_s=0 serves the tower alone (the index is another job's and another
server's: at 10M items a server holding both beside the trainer does not fit in
24 GB). --export_in_child runs each of the trainer's exports in a process of its own;
--no_server runs the trainer alone and measures landed -> published.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

from benchmarks import common

MODEL = "kuaiformer"


def _start(log_path, module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=common.ROOT,
                          env=common.module_env(), stdout=open(log_path, "w"),
                          stderr=subprocess.STDOUT)


def _status(port, model=MODEL):
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{model}", timeout=5) as r:
      return {int(s["version"]): s["state"] for s in json.load(r)["model_version_status"]}
  except OSError:  # not listening yet, or no version loaded yet (404)
    return {}


def _lineage(base, version):
  path = os.path.join(base, str(version), "assets.extra", "online.json")
  with open(path) as f:
    return json.load(f)


def _peak_rss_mb(pid: int) -> float:
  """The process's peak resident memory so far (VmHWM), 0 once it has exited."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
  except (OSError, StopIteration):  # exited
    return 0.0


def _published(base):
  """Versions under `base` as if served the moment they are published (--no_server)."""
  return {int(n): "AVAILABLE" for n in os.listdir(base) if n.isdigit()}


def _wait_served(port, base, name, procs, timeout_s, model=MODEL, peak_rss=None):
  """(time the first AVAILABLE version trained on file `name` was seen, its lineage).
  port None: the first version published. peak_rss: {process name: MB}, each process's
  peak RSS as last polled."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    for proc_name, proc in procs.items():
      if proc.poll() not in (None, 0):
        raise RuntimeError(f"{proc_name} exited with {proc.returncode}")
      if peak_rss is not None:
        peak_rss[proc_name] = max(peak_rss.get(proc_name, 0.0), _peak_rss_mb(proc.pid))
    for version, state in sorted((_status(port, model) if port else _published(base)).items()):
      if state == "AVAILABLE":
        lineage = _lineage(base, version)
        if name in lineage["new_files"] or (name is None and version >= 1):
          return time.time(), lineage
    time.sleep(0.05)
  raise TimeoutError(f"no served version trained on {name} after {timeout_s}s")


class LoadClient(threading.Thread):
  """One client calling the served model (--load_client) from the first version on, through
  every swap, back to back or `rate` calls a second: each failed call is counted with its
  error."""

  def __init__(self, port: int, model: str, data_dir: str, rate: float = 0, seed: int = 0):
    super().__init__(daemon=True)
    self.interval = 1.0 / rate if rate else 0.0
    from serving.client import rest_predict
    from tfkf import data_files
    items = data_files.read_vocab(data_dir, "item")[:1000]
    rng = np.random.default_rng(seed)
    self.histories = [list(rng.choice(items, 20)) for _ in range(64)]
    self.call = lambda history: rest_predict("127.0.0.1", port, model, [history])
    self.stopped, self.calls, self.errors = threading.Event(), 0, []

  def run(self):
    while not self.stopped.wait(self.interval):
      try:
        self.call(self.histories[self.calls % len(self.histories)])
      except Exception as e:  # noqa: BLE001  (every failure is the measurement)
        self.errors.append(f"{type(e).__name__}: {e}")
      self.calls += 1

  def result(self) -> dict:
    self.stopped.set()
    self.join(timeout=60)
    return {"calls": self.calls, "failed": len(self.errors), "errors": self.errors[:5],
            "calls_per_s": 1.0 / self.interval if self.interval else "back to back"}


def prepare(args, work) -> dict:
  """The stream files and the first model (synthetic_stream, build, train)."""
  from beam_pipelines import synthetic_stream
  files = synthetic_stream.generate(synthetic_stream.parse_args([
      f"--output_dir={work}/stream", f"--users={args.users}", f"--items={args.items}",
      f"--batches={args.batches}", f"--new_items_per_batch={args.new_items_per_batch}",
      f"--batch_min_events={args.batch_events // 2}", f"--batch_max_events={args.batch_events}",
      f"--seed={args.seed}"]))
  common.timed_module("beam_pipelines.build", "--runner=DirectRunner", f"--input={files['initial']}",
                      "--format=kuairand", f"--item_features={files['items']}",
                      f"--output_dir={work}/data", f"--max_len={args.max_len}")
  common.timed_module("tfkf.train", f"--data_dir={work}/data", f"--model_dir={work}/run",
                      "--preset=small", "--epochs=1", f"--steps_per_epoch={args.init_steps}",
                      "--batch_size=64", "--validation_steps=1", "--verbose=2")
  return files


def reuse(prepared_dir, work, batches) -> dict:
  """prepare()'s result from an earlier run's stream/, data/ and run/ (linked into work)."""
  for name in ("stream", "data", "run"):
    os.symlink(os.path.abspath(os.path.join(prepared_dir, name)), os.path.join(work, name))
  stream = os.path.join(work, "stream")
  return {"initial": os.path.join(stream, "initial", "log.csv"),
          "items": os.path.join(stream, "items.csv"),
          "batches": sorted(glob.glob(os.path.join(stream, "batches", "batch-*.csv")))[:batches]}


def start_at_size(args, work) -> (str, str):
  """(init data dir, init model dir): data/ and run/, or both over --catalog_size items."""
  if not args.catalog_size:
    return f"{work}/data", f"{work}/run"
  out = f"{work}/size-{args.catalog_size}{'-lazy_adam' if args.lazy_adam else ''}"
  if not os.path.exists(os.path.join(out, "run")):
    subprocess.run([sys.executable, "-m", "benchmarks.scale_step", "start", f"--work_dir={work}",
                    f"--size={args.catalog_size}", f"--seed={args.seed}", f"--out={out}",
                    *(["--lazy_adam"] if args.lazy_adam else [])],
                   cwd=common.ROOT, env=common.module_env(), check=True)
  return os.path.join(out, "data"), os.path.join(out, "run")


def measure(args, work, files) -> (list, dict):
  """(a row per landed file, the server's and the trainer's peak RSS in MB)."""
  base, incoming = os.path.join(work, "models"), os.path.join(work, "incoming")
  os.makedirs(base)
  os.makedirs(incoming)
  init_data, init_model = start_at_size(args, work)
  port = None if args.no_server else common.free_port()
  if args.servable == "user_tower":
    model, exports = "user_tower", os.path.join(base, "user_tower")
    os.makedirs(exports)
    split = ["--servable=user_tower"]
    if args.index_every_s:
      served = [f"--model_config_file={common.split_config(base)}"]
      split += [f"--index_export_base={base}/item_index", f"--index_every_s={args.index_every_s}"]
    else:
      served = [f"--model_name={model}", f"--model_base_path={exports}"]
  else:
    model, exports = MODEL, base
    served, split = [f"--model_name={MODEL}", f"--model_base_path={base}"], []
  procs = {} if args.no_server else {"serving.server": _start(
      os.path.join(work, "server.log"), "serving.server", *served, f"--rest_api_port={port}",
      "--port=0", "--file_system_poll_wait_seconds=0.2")}
  procs["online.train"] = _start(
      os.path.join(work, "trainer.log"), "online.train", f"--stream_dir={incoming}",
      f"--state_dir={work}/state", f"--init_data_dir={init_data}", f"--init_model_dir={init_model}",
      f"--item_features={files['items']}", f"--export_base={exports}", "--export_every_s=0",
      f"--index={args.index}", f"--top_k={args.top_k}", "--max_files_per_batch=1",
      "--poll_interval_s=0.2", f"--max_batches={args.batches}",
      f"--epochs_per_batch={args.epochs_per_batch}", *split,
      *(["--export_in_child"] if args.export_in_child else []),
      *(["--batch_in_child"] if args.batch_in_child else []),
      *([f"--before_training_examples={args.before_training_examples}"]
        if args.before_training_examples else []))
  rows, peak_rss, client = [], {}, None
  try:
    _wait_served(port, exports, None, procs, 1800, model, peak_rss)  # version 1: the start
    if args.load_client and port:
      client = LoadClient(port, model, init_data, args.load_client_rate, args.seed)
      client.start()
    for path in files["batches"]:
      name = os.path.basename(path)
      shutil.copy(path, os.path.join(incoming, "." + name))
      landed = time.time()
      os.rename(os.path.join(incoming, "." + name), os.path.join(incoming, name))
      served, lineage = _wait_served(port, exports, name, procs, 1800, model, peak_rss)
      batch = lineage["batch"]
      rows.append({
          "file": name, "version": lineage["version"], "rows_in": batch["batch_counts"]["rows_in"],
          "examples": batch["batch_counts"]["examples"], "new_items": batch["new_items"],
          "train_steps": batch["steps"], "model_in_place": batch.get("model_in_place", False),
          "freshness_s": served - landed,
          "pickup_s": batch["started_at"] - landed, **batch["timings"],
          "export_s": lineage["export_s"], "load_s": served - lineage["exported_at"]})
      print(json.dumps(rows[-1]), flush=True)
    procs["online.train"].wait(timeout=600)
  finally:
    load = client.result() if client else None
    for proc in procs.values():
      if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
  return rows, peak_rss, load


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--users", type=int, default=2000)
  p.add_argument("--items", type=int, default=3000)
  p.add_argument("--batches", type=int, default=6)
  p.add_argument("--batch_events", type=int, default=8, help="most events per user per batch")
  p.add_argument("--new_items_per_batch", type=int, default=50)
  p.add_argument("--max_len", type=int, default=64)
  p.add_argument("--init_steps", type=int, default=200, help="training steps of the first model")
  p.add_argument("--epochs_per_batch", type=float, default=1.0)
  p.add_argument("--index", choices=["scann", "brute_force"], default="scann")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--catalog_size", type=int, default=0,
                 help="start from the first model over this many items (0: the stream's own)")
  p.add_argument("--servable", choices=["retriever", "user_tower"], default="retriever",
                 help="user_tower: serve and measure the split (tower per batch, index on a cadence)")
  p.add_argument("--index_every_s", type=float, default=600.0,
                 help="--servable=user_tower: least seconds between item index exports "
                      "(0: no index, the tower served alone)")
  p.add_argument("--lazy_adam", action="store_true",
                 help="with --catalog_size: the model continues with LazyAdam (tfkf.optimizers): "
                      "only the batch's rows move, where Adam rewrites the whole table each step")
  p.add_argument("--before_training_examples", type=int, default=None,
                 help="online.train's test-then-train users per batch (default all)")
  p.add_argument("--export_in_child", action="store_true",
                 help="online.train --export_in_child: each export in a process of its own")
  p.add_argument("--batch_in_child", action="store_true",
                 help="online.train --batch_in_child: each micro-batch in a process of its own")
  p.add_argument("--no_server", action="store_true",
                 help="the trainer alone: landed -> published (for catalogs whose trainer and "
                      "server do not fit one machine; the server's load is bench-scale's swap)")
  p.add_argument("--load_client", action="store_true",
                 help="one client calls the served model throughout; its failed calls are "
                      "reported")
  p.add_argument("--load_client_rate", type=float, default=0,
                 help="--load_client's calls per second (0: back to back; on 2 cores the "
                      "client, the server and the trainer then share them)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=None, help="keep the artifacts here (default: a temp dir)")
  p.add_argument("--prepared_dir", default=None,
                 help="reuse stream/, data/ and run/ of an earlier --workdir (generation flags ignored)")
  p.add_argument("--output", default=None)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  work = args.workdir or tempfile.mkdtemp(prefix="tfkf-bench-freshness-")
  os.makedirs(work, exist_ok=True)
  files = reuse(args.prepared_dir, work, args.batches) if args.prepared_dir else prepare(args, work)
  rows, peak_rss, load = measure(args, work, files)
  fresh = [r["freshness_s"] for r in rows]
  env = [f"{k}={os.environ[k]}" for k in ("TF_ENABLE_ONEDNN_OPTS",) if k in os.environ]
  payload = {"command": " ".join([*env, common.command("benchmarks.freshness", argv)]),
             "config": {k: v for k, v in vars(args).items() if k not in ("workdir", "output")},
             "batches": rows, "peak_rss_mb": peak_rss, "load_client": load, "median_freshness_s": statistics.median(fresh),
             "max_freshness_s": max(fresh), "min_freshness_s": min(fresh),
             "versions": common.versions("tensorflow", "apache-beam", "scann")}
  print(f"wrote {common.write('freshness', payload, args.output)}")
  if not args.workdir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
