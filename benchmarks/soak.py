"""make bench-soak: serving.server under mixed valid and hostile traffic, with version swaps.

  python -m benchmarks.soak --seconds 600 --concurrency 32 --swaps 2

The demo's model (synthetic log, small preset, ScaNN export) is served by
serving.server with its default limits. `--concurrency` client threads send, in
a closed loop, valid predicts (REST and gRPC) and, with probability
--hostile_fraction, a case of benchmarks/hostile_requests.py (REST or gRPC);
two more threads keep opening slow-header and short-body connections. A new
version is published (a copy of version 1 renamed into place) at each of
--swaps evenly spaced times. Recorded: every valid request's outcome and latency, every hostile
answer against the one expected, the server's RSS each second. Writes
benchmarks/results/soak.json; the report plots RSS over time.
"""

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import numpy as np

from benchmarks import common, hostile_requests as hostile
from serving.client import grpc_predict, rest_predict, wait_until_available

MODEL = "kuaiformer"


def prepare(work: str) -> (str, str):
  """(export base, its log): the demo's model, built, trained and exported by the CLIs."""
  raw, data, run, base = (os.path.join(work, d) for d in ("raw", "data", "run", "models"))
  common.timed_module("beam_pipelines.synthetic", "--users=2000", "--items=3000", "--seed=7",
                      f"--output={raw}/log.csv")
  common.timed_module("beam_pipelines.build", "--runner=DirectRunner", f"--input={raw}/log.csv",
                      "--format=kuairand", f"--item_features={raw}/items.csv", f"--output_dir={data}",
                      "--max_len=64")
  common.timed_module("tfkf.train", f"--data_dir={data}", f"--model_dir={run}", "--preset=small",
                      "--epochs=2", "--steps_per_epoch=150", "--batch_size=128", "--verbose=0")
  common.timed_module("serving.export", f"--model_dir={run}", f"--data_dir={data}",
                      f"--export_base={base}", "--index=scann", "--top_k=100")
  return base, f"{raw}/log.csv"


def sample_histories(log: str, users: int = 500, length: int = 50):
  """The newest `length` items of the first `users` users of a synthetic (kuairand-format) log."""
  histories = {}
  with open(log) as f:
    next(f)
    for line in f:
      user, item = line.split(",", 2)[:2]
      histories.setdefault(user, []).append(item)
  return [h[-length:] for h in list(histories.values())[:users]]


def rss_bytes(pid: int) -> int:
  with open(f"/proc/{pid}/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))


class Traffic:
  """The client threads and what they saw."""

  def __init__(self, rest: int, grpc_port: int, histories, hostile_fraction: float, seed: int):
    self.rest, self.grpc, self.histories = rest, grpc_port, histories
    self.hostile_fraction, self.seed = hostile_fraction, seed
    self.stop = threading.Event()
    self.lock = threading.Lock()
    self.valid = []          # (time, api, seconds, ok, error)
    self.hostile = []        # (case name, api, expected answer seen, what was seen)
    self.slow = []           # (kind, seconds until the server closed)

  def client(self, worker: int) -> None:
    rng = random.Random(self.seed * 1000 + worker)
    channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc}")
    while not self.stop.is_set():
      if rng.random() < self.hostile_fraction:
        self._hostile(rng, channel)
      else:
        self._valid(rng)
    channel.close()

  def _valid(self, rng) -> None:
    history, api = rng.choice(self.histories), rng.choice(["REST", "REST", "gRPC"])
    started, ok, error = time.perf_counter(), True, ""
    try:
      if api == "REST":
        ok = len(rest_predict("127.0.0.1", self.rest, MODEL, [history])["predictions"][0]["item_ids"]) > 0
      else:
        ok = len(grpc_predict("127.0.0.1", self.grpc, MODEL, [history])["item_ids"][0]) > 0
    except Exception as e:  # any failure of a valid request is what this benchmark counts
      ok, error = False, f"{type(e).__name__}: {e}"[:300]
    with self.lock:
      self.valid.append((time.time(), api, time.perf_counter() - started, ok, error))

  def _hostile(self, rng, channel) -> None:
    if rng.random() < 0.7:
      case = rng.choice(hostile.REST_CASES)
      try:
        status, body = hostile.send_rest("127.0.0.1", self.rest, case, MODEL)
        answer = f"{status} {body[:200].decode(errors='replace')}"
        seen = status == case.status and case.error.replace("{model}", MODEL) in json.loads(body)["error"]
      except Exception as e:
        seen, answer = False, f"{type(e).__name__}: {e}"[:200]
      api = "REST"
    else:
      case = rng.choice(hostile.GRPC_CASES)
      code, details = hostile.send_grpc(channel, case, MODEL)
      seen, api, answer = code == case.code and case.details in details, "gRPC", f"{code.name} {details[:200]}"
    with self.lock:
      self.hostile.append((case.name, api, seen, answer))

  def slow_client(self, kind: str) -> None:
    payload = {"headers": b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\n",
               "body": b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n{"}
    while not self.stop.is_set():
      started = time.monotonic()
      try:
        with socket.create_connection(("127.0.0.1", self.rest), timeout=120) as sock:
          sock.sendall(payload[kind])
          while sock.recv(65536):
            pass
        closed_after = time.monotonic() - started
      except OSError:
        closed_after = float("nan")
      with self.lock:
        self.slow.append((kind, closed_after))


def served_version(rest: int) -> int:
  with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v1/models/{MODEL}", timeout=10) as r:
    states = json.load(r)["model_version_status"]
  return max(int(s["version"]) for s in states if s["state"] == "AVAILABLE")


def wait_for_version(rest: int, version: int, timeout_s: float = 60) -> int:
  """The version served once `version` is, or after `timeout_s` (a swap still loading)."""
  deadline = time.monotonic() + timeout_s
  while (served := served_version(rest)) < version and time.monotonic() < deadline:
    time.sleep(0.5)
  return served


def publish_copy(base: str, version: int) -> None:
  staging = os.path.join(base, f".staging-{version}")
  shutil.copytree(os.path.join(base, "1"), staging)
  os.rename(staging, os.path.join(base, str(version)))


def run(args) -> dict:
  work = args.work_dir or tempfile.mkdtemp(prefix="soak-")
  os.makedirs(work, exist_ok=True)
  base, log = (args.export_base, args.log) if args.export_base else prepare(work)
  histories = sample_histories(log)
  rest, grpc_port = common.free_port(), common.free_port()
  server = subprocess.Popen([sys.executable, "-m", "serving.server", f"--model_name={MODEL}",
                             f"--model_base_path={base}", f"--rest_api_port={rest}", f"--port={grpc_port}",
                             *args.server_flags],
                            cwd=common.ROOT, env=common.module_env(),
                            stdout=open(os.path.join(work, "server.log"), "w"),
                            stderr=subprocess.STDOUT)
  try:
    wait_until_available("127.0.0.1", rest, MODEL, timeout_s=180)
    traffic = Traffic(rest, grpc_port, histories, args.hostile_fraction, args.seed)
    threads = [threading.Thread(target=traffic.client, args=(w,)) for w in range(args.concurrency)]
    threads += [threading.Thread(target=traffic.slow_client, args=(k,)) for k in ("headers", "body")]
    started, rss, swaps = time.time(), [], []
    swap_at = [args.seconds * (i + 1) / (args.swaps + 1) for i in range(args.swaps)]
    for t in threads:
      t.start()
    while (elapsed := time.time() - started) < args.seconds:
      rss.append((elapsed, rss_bytes(server.pid)))
      if swap_at and elapsed >= swap_at[0]:
        swap_at.pop(0)
        publish_copy(base, len(swaps) + 2)
        swaps.append(elapsed)
      time.sleep(1.0)
    traffic.stop.set()
    for t in threads:
      t.join(timeout=180)
    served = wait_for_version(rest, len(swaps) + 1)
  finally:
    server.terminate()
    server.wait(timeout=60)
  return summarize(args, traffic, rss, swaps, served, started)


def _median_rss(rss, start_s: float, window_s: float) -> float:
  return statistics.median(b for t, b in rss if start_s <= t < start_s + window_s)


def summarize(args, traffic: Traffic, rss, swaps, served: int, started: float) -> dict:
  valid = traffic.valid
  latencies = np.array([s for _, _, s, ok, _ in valid if ok]) * 1e3
  failures = [e for _, _, _, ok, e in valid if not ok]
  missed = {}
  for name, api, seen, answer in traffic.hostile:
    if not seen:
      entry = missed.setdefault(f"{api}: {name}", {"count": 0, "answers": []})
      entry["count"] += 1
      entry["answers"] = (entry["answers"] + [answer])[:3]
  window = min(60.0, (args.seconds - args.warmup_s) / 2)
  warm, last = _median_rss(rss, args.warmup_s, window), _median_rss(rss, args.seconds - window, window)
  return {
      "config": {"server_flags": args.server_flags, "seconds": args.seconds, "concurrency": args.concurrency, "swaps": args.swaps,
                 "hostile_fraction": args.hostile_fraction, "rest_cases": len(hostile.REST_CASES),
                 "grpc_cases": len(hostile.GRPC_CASES), "slow_clients": 2, "warmup_s": args.warmup_s},
      "valid_requests": len(valid), "failed_valid_requests": len(failures),
      "failures_sample": failures[:10],
      "valid_per_api": {api: sum(1 for v in valid if v[1] == api) for api in ("REST", "gRPC")},
      "valid_p50_ms": float(np.percentile(latencies, 50)), "valid_p99_ms": float(np.percentile(latencies, 99)),
      "hostile_requests": len(traffic.hostile), "hostile_unexpected_answers": missed,
      "slow_connections": len(traffic.slow),
      "slow_closed_after_s_max": max((s for _, s in traffic.slow if s == s), default=None),
      "swaps_at_s": swaps, "served_version_at_end": served,
      "rss_mb": [[round(t, 1), round(b / 2**20, 1)] for t, b in rss],
      "rss_window_s": window, "rss_first_window_after_warmup_mb": warm / 2**20,
      "rss_last_window_mb": last / 2**20,
      "rss_last_over_first": last / warm, "rss_peak_mb": max(b for _, b in rss) / 2**20,
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, default=600)
  p.add_argument("--concurrency", type=int, default=32)
  p.add_argument("--swaps", type=int, default=2)
  p.add_argument("--hostile_fraction", type=float, default=0.3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--warmup_s", type=float, default=60,
                 help="RSS is compared from this second on (the first window after it against the last)")
  p.add_argument("--export_base", default=None, help="serve this export instead of training the demo's")
  p.add_argument("--log", default=None, help="with --export_base: the log to take histories from")
  p.add_argument("--server_flag", dest="server_flags", action="append", default=[],
                 help="one more serving.server flag (repeatable); default: the server's defaults")
  p.add_argument("--work_dir", default=None)
  p.add_argument("--output", default=None)
  args = p.parse_args()
  result = run(args)
  result["versions"] = common.versions("tensorflow", "aiohttp", "grpcio")
  print(common.write("soak", result, args.output))
  print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"}, indent=1))


if __name__ == "__main__":
  main()
