"""tfkf.train --strategy=parameter_server on a real cluster: 2 parameter servers, 2 workers and
the chief, each its own process on 127.0.0.1. The embedding tables are split over the parameter
servers, and the trained model exports as one trained on one machine does."""

import json
import subprocess
import sys

import tensorflow as tf

import cli
from servers import export


def _cluster_train(data_dir, model_dir, log_dir) -> str:
  """The chief's stdout; the parameter servers and workers serve until they are killed."""
  cluster = {"chief": [f"127.0.0.1:{cli.free_port()}"],
             "worker": [f"127.0.0.1:{cli.free_port()}" for _ in range(2)],
             "ps": [f"127.0.0.1:{cli.free_port()}" for _ in range(2)]}
  args = ["-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
          "--preset=small", "--batch_size=32", "--epochs=1", "--steps_per_epoch=4",
          "--validation_steps=2", "--verbose=2", "--strategy=parameter_server",
          "--min_shard_bytes=4096"]  # every table split, the side features' (12 KB) included
  env = lambda task, i: {**cli.env(), "TF_CONFIG": json.dumps(
      {"cluster": cluster, "task": {"type": task, "index": i}})}
  servers = [subprocess.Popen([sys.executable, *args], cwd=cli.ROOT, env=env(task, i),
                              stdout=open(log_dir / f"{task}-{i}.log", "w"), stderr=subprocess.STDOUT)
             for task in ("ps", "worker") for i in range(2)]
  try:
    chief = subprocess.run([sys.executable, *args], cwd=cli.ROOT, env=env("chief", 0),
                           capture_output=True, text=True, timeout=180)
  finally:
    for server in servers:
      server.kill()
      server.wait()
  assert chief.returncode == 0, chief.stderr[-4000:]
  for server in servers:
    assert server.returncode == -9, "a parameter server or worker ended before the chief"
  return chief.stdout


def _variables(checkpoint: str) -> dict:
  reader = tf.train.load_checkpoint(checkpoint)
  return {k: s for k, s in reader.get_variable_to_shape_map().items() if "OPTIMIZER_SLOT" not in k}


def test_cluster_splits_the_tables_over_the_parameter_servers_and_exports_as_one_machine(
    trained, tmp_path):
  data_dir = trained["data"]  # the shared build (read only): this test trains its own run
  out = _cluster_train(data_dir, tmp_path / "run", tmp_path)
  sharded = json.loads(next(l for l in out.splitlines() if "sharded_variables" in l))
  both = [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in range(2)]
  for table in ("token_embedding/item/embeddings", "item_side_features/tag"):
    [parts] = [v for name, v in sharded["sharded_variables"].items() if name.endswith(table)]
    assert sorted(parts) == both, table
  assert json.loads(out.strip().splitlines()[-1])["epochs"] == 1

  # The checkpoint holds every table whole, named as one machine's: a plain model restores it.
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import build_model, read_config
  alone = build_model(read_config(str(tmp_path / "run")), Catalog.load(data_dir), 1e-3)
  alone.save_weights(str(tmp_path / "alone" / "final"))
  trained = _variables(str(tmp_path / "run" / "weights" / "final"))
  assert trained == _variables(str(tmp_path / "alone" / "final")) and len(trained) > 40

  base = tmp_path / "models"
  export({"run": tmp_path / "run", "data": data_dir}, base, "--index=brute_force")
  with open(base / "1" / "assets.extra" / "verification.json") as f:
    # The serving signature answers as the Keras model restored on one machine does (the
    # server in front of a SavedModel is tested in test_serving).
    assert json.load(f)["identical_rows_up_to_ties"] == 1.0
