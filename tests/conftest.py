import os

import pytest

# TFRS needs Keras 2; must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_and_train(d, users: int, steps: int, batch_size: int) -> dict:
  """A synthetic log built by Beam and a small model fitted on it, by the CLIs a user runs."""
  import cli
  log = str(d / "raw" / "log.csv")
  cli.run("beam_pipelines.synthetic", f"--users={users}", "--items=1500", "--seed=3", f"--output={log}")
  cli.run("beam_pipelines.build", "--runner=DirectRunner", f"--input={log}", "--format=kuairand",
          f"--item_features={d / 'raw' / 'items.csv'}", f"--output_dir={d / 'data'}", "--max_len=64")
  cli.run("tfkf.train", f"--data_dir={d / 'data'}", f"--model_dir={d / 'run'}", "--preset=small",
          "--epochs=1", f"--steps_per_epoch={steps}", f"--batch_size={batch_size}",
          "--validation_steps=4", "--verbose=2")
  return {"log": log, "items": str(d / "raw" / "items.csv"), "data": str(d / "data"),
          "run": str(d / "run"), "dir": d}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  return build_and_train(tmp_path_factory.mktemp("trained"), users=1000, steps=160, batch_size=128)
