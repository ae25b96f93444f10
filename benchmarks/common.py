"""What every benchmark result records: machine, versions, date."""

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def machine() -> dict:
  with open("/proc/cpuinfo") as f:
    model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
  return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
          "python": platform.python_version()}


def command(module: str, argv=None) -> str:
  """The command line that ran `module`: main()'s argv, or this process's when None."""
  return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def versions(*packages) -> dict:
  from importlib.metadata import version
  return {p: version(p) for p in packages}


def module_env() -> dict:
  """The environment of a project module run as a process of its own (python -m, cwd ROOT)."""
  return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


def timed_module(module: str, *args: str) -> float:
  """Wall seconds of `python -m module args` (process start included); raises on failure."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=module_env(),
                        capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
  return time.perf_counter() - start


def split_config(base: str) -> str:
  """deploy/split/models.config with its models under `base`, written there; its path."""
  with open(os.path.join(ROOT, "deploy", "split", "models.config")) as f:
    config = f.read().replace("/models/", base.rstrip("/") + "/")
  path = os.path.join(base, "models.config")
  with open(path, "w") as f:
    f.write(config)
  return path


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def write(name: str, payload: dict, output: str = None) -> str:
  path = output or os.path.join(RESULTS, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  record = {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), "machine": machine(), **payload}
  with open(path, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write("\n")
  return path


def median_ci95(values, resamples: int = 10_000, seed: int = 0) -> list:
  """[low, high]: the bootstrap 95% interval of the median of `values`."""
  values = np.asarray(values)
  medians = np.median(np.random.default_rng(seed).choice(values, (resamples, len(values))), axis=1)
  return [float(x) for x in np.percentile(medians, [2.5, 97.5])]
