"""tfkf.train --strategy=parameter_server on a real cluster: 2 parameter servers, 2 workers and
the chief, each its own process on 127.0.0.1. The embedding tables are split over the parameter
servers, and the trained model exports and serves as one trained on one machine does."""

import csv
import json
import subprocess
import sys

import pytest
import tensorflow as tf

import cli
from beam_pipelines import build, synthetic
from servers import K, Server, export
from serving.client import rest_predict, wait_until_available


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("ps_data")
  synthetic.generate(synthetic.parse_args(["--users=300", "--items=600", "--seed=3",
                                           f"--output={d / 'raw' / 'log.csv'}"]))
  build.run(["--runner=DirectRunner", f"--input={d / 'raw' / 'log.csv'}", "--format=kuairand",
             f"--output_dir={d / 'data'}", "--max_len=64"])
  return d / "data"


def _cluster_train(data_dir, model_dir, log_dir) -> str:
  """The chief's stdout; the parameter servers and workers serve until they are killed."""
  cluster = {"chief": [f"127.0.0.1:{cli.free_port()}"],
             "worker": [f"127.0.0.1:{cli.free_port()}" for _ in range(2)],
             "ps": [f"127.0.0.1:{cli.free_port()}" for _ in range(2)]}
  args = ["-m", "tfkf.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
          "--preset=small", "--batch_size=32", "--epochs=2", "--steps_per_epoch=4",
          "--validation_steps=2", "--verbose=2", "--strategy=parameter_server",
          "--min_shard_bytes=32768"]  # the item table (77 KB) is split, over both ps tasks
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


def test_cluster_splits_the_item_table_over_the_parameter_servers_and_its_export_serves(
    data_dir, tmp_path):
  out = _cluster_train(data_dir, tmp_path / "run", tmp_path)
  sharded = json.loads(next(l for l in out.splitlines() if "sharded_variables" in l))
  item_table = next(v for name, v in sharded["sharded_variables"].items()
                    if name.endswith("token_embedding/item/embeddings"))
  assert sorted(item_table) == [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in range(2)]
  assert json.loads(out.strip().splitlines()[-1])["epochs"] == 2

  # The checkpoint holds every table whole, named as one machine's: a plain model restores it.
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import build_model, read_config
  alone = build_model(read_config(str(tmp_path / "run")), Catalog.load(str(data_dir)), 1e-3)
  alone.save_weights(str(tmp_path / "alone" / "final"))
  trained = _variables(str(tmp_path / "run" / "weights" / "final"))
  assert trained == _variables(str(tmp_path / "alone" / "final")) and len(trained) > 40

  base = tmp_path / "models"
  export({"run": tmp_path / "run", "data": data_dir}, base, "--index=brute_force")
  with open(base / "1" / "assets.extra" / "verification.json") as f:
    assert json.load(f)["identical_rows_up_to_ties"] == 1.0  # the SavedModel answers as Keras
  server = Server(str(tmp_path / "server.log"), "--model_name=kuaiformer",
                  f"--model_base_path={base}")
  try:
    wait_until_available("127.0.0.1", server.rest, "kuaiformer", timeout_s=120)
    with open(data_dir / "catalog.csv") as f:
      items = [row["item_id"] for row in csv.DictReader(f)][:12]
    row = rest_predict("127.0.0.1", server.rest, "kuaiformer", [items])["predictions"][0]
    assert len(set(row["item_ids"])) == K and not set(row["item_ids"]) & set(items)
  finally:
    server.stop()
