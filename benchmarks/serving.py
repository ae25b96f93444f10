"""make bench-serving: latency and throughput of serving.server against the in-process floor.

A small KuaiFormer is built and trained on SASRec Games (23,715 items) by the
project's CLIs. Its retrieval is exported for the native catalog and for a
catalog padded to --catalogs items with synthetic items around the trained
ones (each a random trained item embedding plus Gaussian noise of 0.3x the
per-dimension spread, so the index sees clustered, anisotropic data), with a
ScaNN and a brute-force index. For each export:
  * floor: the SavedModel's serving_default called in-process, one user per call;
  * server: serving.server with batching off and on, at each concurrency, closed loop on
    the same 2 cores: REST from wrk (C, one thread: the load generator's own cost stays out
    of the server's numbers), gRPC from a grpc.aio client on uvloop (no gRPC load generator
    in C installs here: h2load sends one fixed body and never reads grpc-status), so the gRPC
    numbers include Python's gRPC client;
  * the server overhead at concurrency 1, measured fairly on a shared machine: floor,
    REST (wrk), REST from a Python client (aiohttp), gRPC, and REST (wrk) and gRPC against
    bare servers (benchmarks/bare_server.py: what aiohttp and grpcio cost by themselves) in
    alternating short rounds, the median over rounds of p50 / floor p50, with a bootstrap
    95% interval over rounds;
  * ScaNN recall@K against brute force on the same histories.

  python -m benchmarks.serving --catalogs 0,1000000 --concurrency 1,8,32 --seconds 8

Needs wrk on the PATH (`make tools`: Debian's package).
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import aiohttp
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
import uvloop

from benchmarks import common
from serving import servable, verify
from serving.client import wait_until_available
from serving.export import SAVE_OPTIONS
from serving.retriever import Retriever, serving_signatures
from tfkf import features
from tfkf.catalog import Catalog
from tfkf.checkpoint import load_trained

GAMES = os.path.join(common.ROOT, "..", "shared", "data", "sasrec_games", "Video.txt")
WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_predict.lua")


def prepare(args) -> (str, str):
  """(data_dir, model_dir): the Beam build and a short training run, cached in work_dir."""
  data, run = os.path.join(args.work_dir, "data"), os.path.join(args.work_dir, "run")
  if not os.path.exists(os.path.join(run, "config.json")):
    common.timed_module("beam_pipelines.build", "--runner=DirectRunner", f"--input={args.input}",
                        f"--format={args.format}", f"--output_dir={data}", f"--max_len={args.max_len}")
    common.timed_module("tfkf.train", f"--data_dir={data}", f"--model_dir={run}", "--preset=small",
                        f"--config_overrides={json.dumps({'max_len': args.max_len})}",
                        "--epochs=1", f"--steps_per_epoch={args.train_steps}", "--batch_size=128",
                        "--validation_steps=2", "--verbose=0")
  return data, run


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """prepare()'s flags: the data and training of the served model, cached in --work_dir."""
  p.add_argument("--input", default=GAMES)
  p.add_argument("--format", default="sasrec")
  p.add_argument("--work_dir", default="/tmp/tfkf-bench-serving")
  p.add_argument("--max_len", type=int, default=64)
  p.add_argument("--train_steps", type=int, default=400)


def padded_catalog(catalog: Catalog, embeddings: np.ndarray, size: int, seed: int = 0):
  """(item ids, embeddings) of `size` real items: the trained ones, then synthetic ones."""
  real = embeddings[2:]
  extra = max(0, size - len(real))
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((extra, real.shape[1])).astype(np.float32) * (0.3 * real.std(axis=0))
  synthetic = real[rng.integers(0, len(real), extra)] + noise
  return padded_item_ids(catalog, size), np.concatenate([embeddings, synthetic]).astype(np.float32)


def padded_item_ids(catalog: Catalog, size: int) -> np.ndarray:
  """The catalog's item ids (reserved rows included), then synthetic ones up to `size` real items."""
  extra = max(0, size - (catalog.num_items - features.NUM_RESERVED_IDS))
  return np.concatenate([catalog.item_ids, np.array([f"synthetic-{i}" for i in range(extra)], object)])


def export(model, data_dir, item_ids, embeddings, index, top_k, path) -> float:
  """Saves one version; returns the index build + save seconds."""
  start = time.perf_counter()
  retriever = Retriever(model, os.path.join(data_dir, "vocab", "item.txt"), item_ids, index=index,
                        top_k=top_k, item_embeddings=embeddings)
  tf.saved_model.save(retriever, path, signatures=serving_signatures(retriever), options=SAVE_OPTIONS)
  return time.perf_counter() - start


DISTRIBUTION = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def percentiles(latencies_s) -> dict:
  ms = np.array(latencies_s) * 1e3
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
          "mean_ms": float(ms.mean()),
          "requests": len(ms), "distribution_ms": {str(q): float(np.percentile(ms, q)) for q in DISTRIBUTION}}


def load_signature(path: str):
  """serving_default as serving.server runs it (serving/servable.py)."""
  return servable.load(path).signatures["serving_default"]


def in_process(signature, histories):
  """The floor: `signature` called in-process for one user (a history of raw ids),
  warmed up on `histories` as the server warms a version up (a ScaNN export's first
  call takes over a second)."""
  call = lambda history: signature(item_ids=history[None])
  for i in range(10):
    call(histories[i % len(histories)])
  return call


def floor(call, histories, seconds: float) -> dict:
  """`call` (in_process's), one user at a time, back to back for `seconds`."""
  latencies, deadline = [], time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    history = histories[len(latencies) % len(histories)]
    start = time.perf_counter()
    call(history)
    latencies.append(time.perf_counter() - start)
  return percentiles(latencies)


async def closed_loop(call, concurrency: int, seconds: float, idle_before_s: float = 0.0) -> dict:
  """`concurrency` clients, each awaiting `call(n)` (True if it succeeded) back to back for
  `seconds`: latency percentiles, throughput and errors.
  With `idle_before_s` the process sleeps (blocking, untimed) before each call."""
  latencies, errors = [], 0
  deadline = time.perf_counter() + seconds

  async def client(worker):
    nonlocal errors
    n = worker
    while time.perf_counter() < deadline:
      if idle_before_s:
        time.sleep(idle_before_s)
      start = time.perf_counter()
      errors += not await call(n)
      latencies.append(time.perf_counter() - start)
      n += concurrency
  started = time.perf_counter()
  await asyncio.gather(*(client(w) for w in range(concurrency)))
  elapsed = time.perf_counter() - started
  return {**percentiles(latencies), "throughput_rps": len(latencies) / elapsed, "errors": errors}


def rest_call(session: aiohttp.ClientSession, url: str, bodies):
  """call(n) for closed_loop: REST predict of body n; True if it answered 200."""
  async def call(n):
    async with session.post(url, data=bodies[n % len(bodies)]) as response:
      await response.read()
      return response.status == 200
  return call


def grpc_call(stub, requests):
  """call(n) for closed_loop: gRPC Predict of request n; True if it succeeded."""
  async def call(n):
    try:
      await stub.Predict(requests[n % len(requests)], timeout=30)
      return True
    except grpc.aio.AioRpcError:
      return False
  return call


def wrk(url: str, bodies_file: str, concurrency: int, seconds: float) -> dict:
  """The closed loop over REST predict from wrk: `concurrency` connections on one thread for
  `seconds` (whole, wrk's unit), the bodies of `bodies_file` in turn; closed_loop's keys."""
  if shutil.which("wrk") is None:
    raise SystemExit("wrk not found: `make tools` installs it (Debian package wrk)")
  out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout=30s",
                        f"--script={WRK_SCRIPT}", url], env={**os.environ, "WRK_BODIES": bodies_file},
                       capture_output=True, text=True, check=True).stdout
  return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


async def drive_grpc(port: int, requests, concurrency: int, seconds: float) -> dict:
  """The closed loop over gRPC Predict (grpc.aio)."""
  async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return await closed_loop(grpc_call(stub, requests), concurrency, seconds)


async def interleaved(call_floor, histories, url, bodies, bodies_file, grpc_port, bare_url, bare_grpc_port,
                      requests, rounds: int, seconds: float, idle_gap_s: float) -> dict:
  """Concurrency 1: the floor, REST (wrk), REST from Python, gRPC, and REST (wrk) and gRPC
  against the bare servers, in alternating rounds of `seconds` each (the order rotating), so
  load drifting on the shared machine hits all of them alike. Gives each path's p50 per round
  and, per round, each server path's p50 over the floor's and serving.server's over the bare
  server's.

  A second floor, "floor_after_idle", idles `idle_gap_s` before each timed call, as a
  server does between the requests of one closed-loop client: on this VM the same call is
  slower after the CPU has idled for a millisecond than back to back (BENCHMARKS.md).
  A first round, not recorded, warms every path (connections, the clients' own code)."""
  async with aiohttp.ClientSession() as session, \
      grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
      grpc.aio.insecure_channel(f"127.0.0.1:{bare_grpc_port}") as bare_channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    bare_stub = prediction_service_pb2_grpc.PredictionServiceStub(bare_channel)

    async def floor_call(n):
      call_floor(histories[n % len(histories)])
      return True

    python_calls = {"floor": floor_call, "floor_after_idle": floor_call,
                    "rest_python": rest_call(session, url, bodies), "grpc": grpc_call(stub, requests),
                    "grpc_bare": grpc_call(bare_stub, requests)}
    names = ["floor", "floor_after_idle", "rest", "rest_python", "grpc", "rest_bare", "grpc_bare"]
    p50 = {name: [] for name in names}
    totals = {name: {"requests": 0, "errors": 0} for name in names}
    for r in range(-1, rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        if name in ("rest", "rest_bare"):
          result = wrk(url if name == "rest" else bare_url, bodies_file, 1, seconds)
        else:
          result = await closed_loop(python_calls[name], 1, seconds,
                                     idle_before_s=idle_gap_s if name == "floor_after_idle" else 0.0)
        if r < 0:
          continue
        p50[name].append(result["p50_ms"])
        for key in totals[name]:
          totals[name][key] += result[key]
  out = {name: {"p50_ms_per_round": v, "p50_ms": float(np.median(v)), **totals[name]}
         for name, v in p50.items()}
  out.update(rounds=rounds, seconds_per_round=seconds, idle_gap_ms=idle_gap_s * 1e3)
  for server in ("rest", "rest_python", "grpc", "rest_bare", "grpc_bare"):
    for floor_name, suffix in (("floor", ""), ("floor_after_idle", "_after_idle")):
      ratios = [a / b for a, b in zip(p50[server], p50[floor_name])]
      out[f"{server}_p50_over_{floor_name}_per_round"] = ratios
      out[f"{server}_overhead{suffix}_median"] = float(np.median(ratios)) - 1
      out[f"{server}_overhead{suffix}_ci95"] = [x - 1 for x in common.median_ci95(ratios)]
  for server in ("rest", "grpc"):  # what serving.server adds to aiohttp and grpcio
    over_bare = [a / b for a, b in zip(p50[server], p50[f"{server}_bare"])]
    out[f"{server}_over_bare_median"] = float(np.median(over_bare)) - 1
    out[f"{server}_over_bare_ci95"] = [x - 1 for x in common.median_ci95(over_bare)]
  return out


def predict_url(port: int) -> str:
  return f"http://127.0.0.1:{port}/v1/models/kuaiformer:predict"


def grpc_requests(histories) -> list:
  out = []
  for history in histories:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kuaiformer"
    request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(history[None]))
    out.append(request)
  return out


def handler_seconds(port: int, entrypoint: str):
  """(sum, count) of the server's own predict latency histogram for an entrypoint."""
  text = urllib.request.urlopen(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics").read().decode()
  labels = f'{{API="predict",entrypoint="{entrypoint}",model_name="kuaiformer"}}'
  value = lambda name: float(next((l.split()[-1] for l in text.splitlines()
                                   if l.startswith(f":tensorflow:serving:request_latency_{name}{labels}")), 0))
  return value("sum") / 1e6, value("count")


def measured(port: int, entrypoint: str, run) -> dict:
  """`run()`'s client-side numbers plus the mean time the server spent inside its handler."""
  before = handler_seconds(port, entrypoint)
  result = run()
  after = handler_seconds(port, entrypoint)
  result["server_handler_mean_ms"] = 1e3 * (after[0] - before[0]) / max(1, after[1] - before[1])
  return result


def floor_on_one_thread(path: str, bodies_file: str, seconds: float) -> dict:
  """The floor in a process whose TensorFlow uses one intra-op thread (fixed per process)."""
  env = {**os.environ, "PYTHONPATH": common.ROOT}
  out = subprocess.run([sys.executable, "-m", "benchmarks.serving", f"--floor_of={path}",
                        f"--floor_bodies={bodies_file}", f"--seconds={seconds}", "--floor_intra_op=1"],
                       cwd=common.ROOT, env=env, capture_output=True, text=True, check=True).stdout
  return json.loads(out.splitlines()[-1])


@contextlib.contextmanager
def served(base: str, log_path: str, *flags, models=("kuaiformer",)):
  """(REST port, gRPC port, process) of a serving.server on `base` with `flags`, stopped on exit,
  once each of `models` is available. base None: the models come from a --model_config_file
  in `flags`."""
  port, grpc_port = common.free_port(), common.free_port()
  model = [f"--model_base_path={base}", f"--model_name={models[0]}"] if base else []
  flags = [*model, f"--rest_api_port={port}", f"--port={grpc_port}", "--num_threads=32", *flags]
  process = subprocess.Popen([sys.executable, "-m", "serving.server", *flags], cwd=common.ROOT,
                             env=common.module_env(), stdout=open(log_path, "w"),
                             stderr=subprocess.STDOUT)
  try:
    for name in models:
      wait_until_available("127.0.0.1", port, name, timeout_s=600)
    yield port, grpc_port, process
  finally:
    process.terminate()
    process.wait(timeout=60)


@contextlib.contextmanager
def bare_served(saved_model: str, log_path: str, bodies, requests):
  """(REST predict URL, gRPC port) of the two benchmarks.bare_server processes on
  `saved_model`, each warmed up on ten requests (a ScaNN export's first call takes seconds)."""
  rest_port, grpc_port = common.free_port(), common.free_port()
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": common.ROOT}
  processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.bare_server", f"--api={api}",
                                 f"--saved_model={saved_model}", f"--port={port}"], cwd=common.ROOT, env=env,
                                stdout=open(f"{log_path}.bare-{api}", "w"), stderr=subprocess.STDOUT)
               for api, port in (("rest", rest_port), ("grpc", grpc_port))]
  try:
    for process, port in zip(processes, (rest_port, grpc_port)):
      wait_for_port(port, process)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for request in requests[:10]:
        stub.Predict(request, timeout=600)
    url = predict_url(rest_port)
    for body in bodies[:10]:
      urllib.request.urlopen(url, data=body, timeout=600).read()
    yield url, grpc_port
  finally:
    for process in processes:
      process.terminate()
      process.wait(timeout=60)


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 600) -> None:
  """Returns once 127.0.0.1:`port` accepts connections; fails if `process` exits first."""
  deadline = time.monotonic() + timeout_s
  while process.poll() is None and time.monotonic() < deadline:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
      return
    time.sleep(0.1)
  raise RuntimeError(f"port {port} not serving (exit code {process.poll()})")


def run(args) -> dict:
  data_dir, model_dir = prepare(args)
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  embeddings = model.item_embeddings().numpy()
  raw = verify.raw_histories(verify.sample_histories(data_dir, model.config.max_len, args.users), catalog)
  histories = [np.array([x for x in h if x], object) for h in raw]  # as sent to the server
  bodies = [json.dumps({"instances": [{"item_ids": [x.decode() for x in h]}]}).encode() for h in histories]
  os.makedirs(args.work_dir, exist_ok=True)
  bodies_file = os.path.join(args.work_dir, "bodies.jsonl")
  with open(bodies_file, "wb") as f:
    f.write(b"\n".join(bodies) + b"\n")
  requests = grpc_requests(histories)
  results = {}
  for size in args.catalogs:
    item_ids, item_embeddings = padded_catalog(catalog, embeddings, size, args.seed)
    label = f"{len(item_ids) - 2} items"
    cell = results[label] = {}
    outputs = {}
    for index in args.indexes:
      base = os.path.join(args.work_dir, "models", f"{len(item_ids)}-{index}")
      shutil.rmtree(base, ignore_errors=True)
      build_s = export(model, data_dir, item_ids, item_embeddings, index, args.top_k, os.path.join(base, "1"))
      signature = load_signature(os.path.join(base, "1"))
      outputs[index] = signature(item_ids=raw)["item_ids"]
      call_floor = in_process(signature, histories)
      entry = cell[index] = {"export_s": build_s, "floor": floor(call_floor, histories, args.seconds)}
      log_path = os.path.join(args.work_dir, f"server-{index}-{size}.log")
      rest = lambda port, c: measured(port, "REST", lambda: wrk(predict_url(port), bodies_file, c, args.seconds))
      for batching in args.batching:
        with served(base, log_path, *(["--enable_batching"] if batching else [])) as (port, grpc_port, _):
          mode = f"batching_{'on' if batching else 'off'}"
          entry[mode] = {str(c): rest(port, c) for c in args.concurrency}
          entry[f"grpc_{mode}"] = {
              str(c): measured(port, "GRPC", lambda: uvloop.run(drive_grpc(grpc_port, requests, c, args.seconds)))
              for c in args.concurrency}
          if not batching and args.rounds:
            with bare_served(os.path.join(base, "1"), log_path, bodies, requests) as (bare_url, bare_grpc_port):
              entry["interleaved_c1"] = uvloop.run(interleaved(
                  call_floor, histories, predict_url(port), bodies, bodies_file,
                  grpc_port, bare_url, bare_grpc_port, requests, args.rounds, args.round_seconds,
                  args.idle_gap_ms / 1e3))
      if args.intra_op_one:
        entry["floor_intra_op_1"] = floor_on_one_thread(os.path.join(base, "1"), bodies_file, args.seconds)
        with served(base, log_path, "--tensorflow_intra_op_parallelism=1") as (port, _, _):
          entry["batching_off_intra_op_1"] = {str(c): rest(port, c) for c in args.concurrency}
      print(json.dumps({label: {index: entry}}), flush=True)
    if "scann" in outputs and "brute_force" in outputs:
      recall = [len(set(a) & set(b)) / len(b) for a, b in zip(outputs["scann"], outputs["brute_force"])]
      cell["scann_recall_at_k"] = float(np.mean(recall))
  return results


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ints = lambda s: [int(x) for x in s.split(",")]
  add_model_flags(p)
  p.add_argument("--catalogs", type=ints, default=[0, 1_000_000],
                 help="catalog sizes; 0 (or anything below the data's) = the data's own items")
  p.add_argument("--indexes", type=lambda s: s.split(","), default=["scann", "brute_force"])
  p.add_argument("--batching", type=lambda s: [x == "on" for x in s.split(",")], default=[False, True])
  p.add_argument("--concurrency", type=ints, default=[1, 8, 32])
  p.add_argument("--seconds", type=int, default=8, help="per concurrency level (whole seconds: wrk's unit)")
  p.add_argument("--rounds", type=int, default=16,
                 help="interleaved floor/REST/gRPC rounds at concurrency 1 (0: none)")
  p.add_argument("--round_seconds", type=int, default=1, help="per path and interleaved round")
  p.add_argument("--idle_gap_ms", type=float, default=1.0,
                 help="idle time before each call of the second floor (about what a server idles "
                      "between one client's requests: a loopback round trip plus HTTP handling)")
  p.add_argument("--intra_op_one", action=argparse.BooleanOptionalAction, default=True,
                 help="also serve with --tensorflow_intra_op_parallelism=1 (REST, batching off)")
  p.add_argument("--users", type=int, default=512, help="distinct test histories sent")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None)
  p.add_argument("--floor_of", default=None, help=argparse.SUPPRESS)  # floor_on_one_thread's child
  p.add_argument("--floor_bodies", default=None, help=argparse.SUPPRESS)
  p.add_argument("--floor_intra_op", type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.floor_of:
    tf.config.threading.set_intra_op_parallelism_threads(args.floor_intra_op)
    with open(args.floor_bodies, "rb") as f:
      histories = [np.array(json.loads(line)["instances"][0]["item_ids"], object) for line in f]
    print(json.dumps(floor(in_process(load_signature(args.floor_of), histories), histories, args.seconds)))
    return
  results = run(args)
  path = common.write("serving", {
      "command": common.command("benchmarks.serving", argv),
      "versions": common.versions("tensorflow", "scann", "aiohttp"),
      "seed": args.seed, "top_k": args.top_k, "max_len": args.max_len, "seconds": args.seconds,
      "results": results}, args.output)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
