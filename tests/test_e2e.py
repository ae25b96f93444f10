"""The walking skeleton, run as a user runs it: synthetic log -> Beam -> fit -> export -> REST."""

import csv
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import cli
import planted
from serving.client import rest_predict, wait_until_available

K = 10


@pytest.fixture(scope="module")
def served(trained, scann_export, tmp_path_factory):
  """serving.server in front of conftest's `serving.export --index=scann --top_k=10` of `trained`."""
  d = tmp_path_factory.mktemp("e2e")
  port = cli.free_port()
  server = cli.start("serving.server", "--model_name=kuaiformer", f"--model_base_path={scann_export}",
                     f"--rest_api_port={port}", "--port=0", log_path=str(d / "server.log"))
  try:
    wait_until_available("127.0.0.1", port, "kuaiformer", timeout_s=120)
    yield {**trained, "port": port, "dir": d}
  finally:
    server.terminate()
    server.wait(timeout=30)


def _predict(served, histories):
  return rest_predict("127.0.0.1", served["port"], "kuaiformer", histories)["predictions"]


def test_rest_response_is_k_distinct_catalog_items_sorted_by_score(served):
  with open(served["items"]) as f:
    catalog = {row["video_id"] for row in csv.DictReader(f)}
  cases, _ = planted.leave_one_out(served["log"], max_users=50)
  for (_, history, _), row in zip(cases, _predict(served, [h for _, h, _ in cases])):
    assert len(row["item_ids"]) == K and len(set(row["item_ids"])) == K
    assert set(row["item_ids"]) <= catalog
    assert not set(row["item_ids"]) & set(history), "history items are excluded by default"
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert all(0 <= i < 4 for i in row["interest"])


def test_hit_rate_on_held_out_next_items_beats_most_popular(served):
  cases, counts = planted.leave_one_out(served["log"])
  hits = 0
  for start in range(0, len(cases), 100):
    chunk = cases[start:start + 100]
    rows = _predict(served, [h for _, h, _ in chunk])
    hits += sum(target in row["item_ids"] for (_, _, target), row in zip(chunk, rows))
  model_hr = hits / len(cases)
  popular_hr = planted.most_popular_hit_rate(cases, counts, K)
  print(f"HR@{K}: model {model_hr:.3f}, most popular {popular_hr:.3f} ({len(cases)} users)")
  assert model_hr >= 3 * popular_hr and model_hr >= popular_hr + 0.05


def test_malformed_request_gets_4xx_json_and_server_keeps_serving(served):
  url = f"http://127.0.0.1:{served['port']}/v1/models/kuaiformer:predict"
  for body in (b"{not json", json.dumps({"instances": [{"item_ids": ["1"]}, {"item_ids": ["1", "2"]}]}).encode(),
               json.dumps({"instances": [{"item_ids": ["1"]}], "signature_name": "nope"}).encode()):
    with pytest.raises(urllib.error.HTTPError) as e:
      urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10)
    assert 400 <= e.value.code < 500
    assert "error" in json.load(e.value)
  assert len(_predict(served, [["1", "2"]])[0]["item_ids"]) == K


def test_evaluate_cli_ranks_the_model_above_most_popular(served):
  d = served["dir"]
  cli.run("tfkf.evaluate", f"--data_dir={served['data']}", f"--model_dir={served['run']}",
          "--split=valid", f"--output={d / 'model.json'}")
  from tfkf import evaluate  # the same CLI in this process: two fewer TensorFlow start-ups
  evaluate.main([f"--data_dir={served['data']}", "--baseline=most_popular",
                 "--split=valid", "--max_len=64", f"--output={d / 'popular.json'}"])
  evaluate.main([f"--data_dir={served['data']}", "--baseline=item_knn",
                 "--split=valid", "--max_len=64", f"--output={d / 'item_knn.json'}"])
  model = json.loads((d / "model.json").read_text())
  popular = json.loads((d / "popular.json").read_text())
  item_knn = json.loads((d / "item_knn.json").read_text())
  assert model["examples"] == popular["examples"] == item_knn["examples"] == 1000
  for k in (10, 100):
    assert model[f"hr@{k}"] > popular[f"hr@{k}"]
  assert item_knn["hr@100"] > popular["hr@100"], "co-occurrence finds the planted clusters"
  assert model["hr@10"] <= model["hr@50"] <= model["hr@100"] <= model["hr@1000"]


def test_sampled_protocol_draws_the_same_untouched_negatives_for_every_model(served):
  from tfkf import data, evaluate, features
  negatives = evaluate.sampled_negatives(served["data"], "valid", num_negatives=100, seed=5)
  again = evaluate.sampled_negatives(served["data"], "valid", num_negatives=100, seed=5)
  np.testing.assert_array_equal(negatives, again)
  assert not np.array_equal(negatives, evaluate.sampled_negatives(served["data"], "valid", 100, seed=6))
  batch = next(iter(data.dataset(served["data"], "valid", 2000, 64, (), shuffle=False, drop_remainder=False)))
  histories, targets = batch[features.HISTORY_ITEM].numpy(), batch[features.TARGET_ITEM].numpy()
  assert len(negatives) == len(targets) == 1000
  for row, history, target in zip(negatives, histories, targets):
    assert len(set(row)) == 100 and not set(row) & (set(history) | {target})
    assert row.min() >= features.NUM_RESERVED_IDS
  scores = tf.constant([[0.0, 0.0, 0.5, 0.9, 0.5, 0.1]])  # target item 2; negatives 3, 4, 5
  ranks = evaluate.sampled_target_ranks(scores, tf.constant([2]), tf.constant([[3, 4, 5]]))
  assert ranks.numpy().tolist() == [2], "a tie counts against the target"


def test_sampled_protocol_ranks_the_model_above_most_popular(served):
  from tfkf import evaluate
  from tfkf.catalog import Catalog
  from tfkf.checkpoint import load_trained
  catalog = Catalog.load(served["data"])
  model = load_trained(served["run"], catalog)
  negatives = evaluate.sampled_negatives(served["data"], "valid", num_negatives=100, seed=1)
  ranked = {name: evaluate.evaluate(scorer, served["data"], "valid", 64, model.config.event_features,
                                    negatives=negatives)
            for name, scorer in (("model", evaluate.model_scorer(model)),
                                 ("popular", evaluate.popularity_scorer(served["data"])))}
  model_hr, popular_hr = ranked["model"], ranked["popular"]
  assert model_hr["examples"] == popular_hr["examples"] == 1000
  assert model_hr["hr@1"] <= model_hr["hr@5"] <= model_hr["hr@10"] and model_hr["ndcg@10"] <= model_hr["hr@10"]
  assert model_hr["hr@10"] > popular_hr["hr@10"] and model_hr["ndcg@10"] > popular_hr["ndcg@10"]
