import fcntl
import os
import pathlib
import shutil

import pytest

# TFRS needs Keras 2; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_and_train(d: pathlib.Path) -> None:
  """A synthetic log built by Beam and a small model fitted on it (in-process: the CLIs are
  the same functions, and this worker has TensorFlow loaded already)."""
  from beam_pipelines import build, synthetic
  from tfkf import train
  log = d / "raw" / "log.csv"
  synthetic.generate(synthetic.parse_args(["--users=1000", "--items=1500", "--seed=3", f"--output={log}"]))
  build.run(["--runner=DirectRunner", f"--input={log}", "--format=kuairand",
             f"--item_features={d / 'raw' / 'items.csv'}", f"--output_dir={d / 'data'}", "--max_len=64"])
  train.train(train.parse_args([f"--data_dir={d / 'data'}", f"--model_dir={d / 'run'}", "--preset=small",
                                "--epochs=1", "--steps_per_epoch=160", "--batch_size=128",
                                "--validation_steps=4", "--verbose=2"]))


def _once_per_run(tmp_path_factory, worker_id, name: str, make) -> pathlib.Path:
  """The directory `name`, made by make(dir) once per test run whichever xdist workers ask
  for it: the first one makes it under a file lock in this run's directory that all workers
  share, the others wait and reuse it (read only)."""
  base = tmp_path_factory.getbasetemp()
  shared = base if worker_id == "master" else base.parent
  with open(shared / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    d = shared / name
    if not (d / "complete").exists():
      shutil.rmtree(d, ignore_errors=True)
      d.mkdir()
      make(d)
      (d / "complete").touch()
  return d


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id):
  """A synthetic log built by Beam and a small model fitted on it, once per test run."""
  d = _once_per_run(tmp_path_factory, worker_id, "trained", build_and_train)
  return {"log": str(d / "raw" / "log.csv"), "items": str(d / "raw" / "items.csv"),
          "data": str(d / "data"), "run": str(d / "run"), "dir": d}


@pytest.fixture(scope="session")
def scann_export(trained, tmp_path_factory, worker_id):
  """`trained` exported by serving.export with a ScaNN index (top 10), once per test run:
  an export base holding version 1 (read only)."""
  from servers import export
  d = _once_per_run(tmp_path_factory, worker_id, "scann_export",
                    lambda d: export(trained, d / "models", "--index=scann", subprocess=True))
  return d / "models"
