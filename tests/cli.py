"""Running the project's entry points the way a user does: as subprocesses (or, where a test
only needs what an entry point computes, its main() in this worker, which has TensorFlow
loaded already: a subprocess would spend 4-5 s of CPU loading it again)."""

import contextlib
import importlib
import io
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env():
  return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
          "PYTHONPATH": ROOT}


def run(module: str, *args: str, timeout: float = 300) -> str:
  """`python -m module args...`; fails the test with the output if it exits non-zero."""
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"{module} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                         f"\n--- stderr\n{proc.stderr[-4000:]}")
  return proc.stdout


def run_in_process(module: str, *args: str) -> str:
  """`module.main(args)` in this process; its stdout, as run() returns it."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    importlib.import_module(module).main(list(args))
  return out.getvalue()


def start(module: str, *args: str, log_path: str) -> subprocess.Popen:
  log = open(log_path, "w")
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env(),
                          stdout=log, stderr=subprocess.STDOUT)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
