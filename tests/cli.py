"""Running the project's entry points the way a user does: as subprocesses."""

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


def start(module: str, *args: str, log_path: str) -> subprocess.Popen:
  log = open(log_path, "w")
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env(),
                          stdout=log, stderr=subprocess.STDOUT)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
