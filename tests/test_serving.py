"""serving.server over real sockets: REST and gRPC, batching, labels, bad input, hot swap under load."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

import cli
import planted
from servers import K, Server, export
from serving.client import grpc_model_status, grpc_predict, rest_predict, wait_until_available

MODEL = "kuaiformer"


@pytest.fixture(scope="module")
def histories(trained):
  cases, _ = planted.leave_one_out(trained["log"], max_users=24)
  return [h for _, h, _ in cases]


@pytest.fixture(scope="module")
def base(trained, tmp_path_factory):
  base = tmp_path_factory.mktemp("serving") / "models"
  result = export(trained, base, "--index=brute_force")
  assert result["version"] == 1
  return base


@pytest.fixture(scope="module")
def batching(base):
  server = Server(str(base.parent / "batching.log"), f"--model_name={MODEL}",
                  f"--model_base_path={base}", "--enable_batching", "--batch_timeout_micros=20000")
  wait_until_available("127.0.0.1", server.rest, MODEL, timeout_s=120)
  yield server
  server.stop()


def test_export_matches_the_keras_model_and_refuses_a_bad_index(trained, base, tmp_path):
  with open(base / "1" / "assets.extra" / "verification.json") as f:
    brute_force = json.load(f)
  assert brute_force["examples"] >= 100 and brute_force["identical_rows_up_to_ties"] == 1.0
  scann = export(trained, tmp_path / "models", "--index=scann")["verification"]
  assert scann[f"recall@{K}"] >= 0.95, scann
  # Stock TF Serving has no ScaNN ops: the brute-force graph must not name any.
  assert b"Scann>" not in (base / "1" / "saved_model.pb").read_bytes()
  assert b"Scann>" in (tmp_path / "models" / "1" / "saved_model.pb").read_bytes()
  from serving import export as exporter, verify
  with pytest.raises(verify.ExportMismatch, match="recall"):  # a threshold no index can meet
    exporter.export(trained["run"], trained["data"], str(tmp_path / "models"), index="scann",
                    top_k=K, min_recall=1.01)
  assert sorted(os.listdir(tmp_path / "models")) == ["1"], "a refused export publishes nothing"


def test_rest_row_columnar_and_grpc_answer_alike(batching, histories):
  width = max(map(len, histories))
  padded = [h + [""] * (width - len(h)) for h in histories]
  rows = rest_predict("127.0.0.1", batching.rest, MODEL, histories)["predictions"]
  status, columnar = batching.post(f"/v1/models/{MODEL}/versions/1:predict",
                                   json.dumps({"inputs": {"item_ids": padded}}).encode())
  assert status == 200
  via_grpc = grpc_predict("127.0.0.1", batching.grpc, MODEL, histories)
  for i, row in enumerate(rows):
    assert row["item_ids"] == columnar["outputs"]["item_ids"][i]
    assert row["item_ids"] == [x.decode() for x in via_grpc["item_ids"][i]]
    np.testing.assert_allclose(row["scores"], via_grpc["scores"][i], rtol=1e-6)
    assert not set(row["item_ids"]) & set(histories[i])
  assert batching.get(f"/v1/models/{MODEL}")["model_version_status"][0]["state"] == "AVAILABLE"
  status = grpc_model_status("127.0.0.1", batching.grpc, MODEL)["model_version_status"][0]
  assert (status["version"], status["state"]) == ("1", "AVAILABLE")
  signatures = batching.get(f"/v1/models/{MODEL}/metadata")["metadata"]["signature_def"]["signature_def"]
  assert {"serving_default", "serving_with_events", "user_embedding"} <= set(signatures)
  stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{batching.grpc}"))
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = MODEL
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(signature_map)
  assert set(signature_map.signature_def) == set(signatures)
  assert set(signature_map.signature_def["serving_default"].outputs) == {"item_ids", "scores", "interest"}


def test_batched_concurrent_calls_equal_single_calls(batching, histories):
  def count_batches():
    text = urllib.request.urlopen(batching.url("/monitoring/prometheus/metrics"), timeout=10).read().decode()
    value = lambda name: float(next(l for l in text.splitlines() if l.startswith(name)).split()[-1])
    return (value(":tensorflow:serving:batching_session:processed_batch_size_count"),
            value(":tensorflow:serving:batching_session:processed_batch_size_sum"))

  alone = [rest_predict("127.0.0.1", batching.rest, MODEL, [h])["predictions"][0] for h in histories]
  batches_before, rows_before = count_batches()
  together = [None] * len(histories)

  def call(i):
    together[i] = rest_predict("127.0.0.1", batching.rest, MODEL, [histories[i]])["predictions"][0]

  threads = [threading.Thread(target=call, args=(i,)) for i in range(len(histories))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  batches, rows = count_batches()
  assert rows - rows_before == len(histories)
  assert batches - batches_before < len(histories), "concurrent calls were merged into batches"
  for a, b in zip(alone, together):
    assert a["item_ids"] == b["item_ids"]
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5)


def test_client_cli_prints_the_same_over_rest_and_grpc(batching, histories):
  history = ",".join(histories[0])
  rest = cli.run("serving.client", f"--history={history}", f"--model_name={MODEL}",
                 f"--rest_api_port={batching.rest}")
  via_grpc = cli.run("serving.client", f"--history={history}", f"--model_name={MODEL}", "--grpc",
                     f"--port={batching.grpc}")
  assert rest == via_grpc and len(rest.strip().splitlines()) == 1 + K


BAD_REQUESTS = {
    "invalid JSON": (b'{"instances": [', 400),
    "not UTF-8": (b'{"instances": [{"item_ids": ["\xff\xfe"]}]}', 400),
    "wrong type": (json.dumps({"instances": [{"item_ids": [1, 2]}]}).encode(), 400),
    "ragged instances": (json.dumps({"instances": [{"item_ids": ["1"]}, {"item_ids": ["1", "2"]}]}).encode(), 400),
    "unknown input": (json.dumps({"instances": [{"items": ["1"]}]}).encode(), 400),
    "no instances": (json.dumps({"signature_name": "serving_default"}).encode(), 400),
    "empty history": (json.dumps({"instances": [{"item_ids": [""]}]}).encode(), 400),
    "10,000-event history": (json.dumps({"instances": [{"item_ids": [str(i) for i in range(10_000)]}]}).encode(), 400),
    "bad b64": (json.dumps({"instances": [{"item_ids": [{"b64": "%%%"}]}]}).encode(), 400),
    "unknown signature": (json.dumps({"instances": [{"item_ids": ["1"]}], "signature_name": "nope"}).encode(), 400),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_4xx_error_json_and_server_keeps_serving(batching, case):
  body, expected = BAD_REQUESTS[case]
  status, answer = batching.post(f"/v1/models/{MODEL}:predict", body)
  assert status == expected and isinstance(answer["error"], str) and answer["error"], answer
  assert len(rest_predict("127.0.0.1", batching.rest, MODEL, [["1", "2"]])["predictions"][0]["item_ids"]) == K


def test_unknown_model_version_label_and_oversized_body_get_4xx(batching):
  ok = json.dumps({"instances": [{"item_ids": ["1"]}]}).encode()
  assert batching.post("/v1/models/nope:predict", ok)[0] == 404
  assert batching.post(f"/v1/models/{MODEL}/versions/99:predict", ok)[0] == 404
  assert batching.post(f"/v1/models/{MODEL}/labels/stable:predict", ok)[0] == 400  # TF Serving's code
  status, answer = batching.post(f"/v1/models/{MODEL}:predict", b"[" + b" " * (5 << 20) + b"]")
  assert status == 413 and "too large" in answer["error"]
  with pytest.raises(grpc.RpcError) as e:
    grpc_predict("127.0.0.1", batching.grpc, "nope", [["1"]])
  assert e.value.code() == grpc.StatusCode.NOT_FOUND
  with pytest.raises(grpc.RpcError) as e:
    grpc_predict("127.0.0.1", batching.grpc, MODEL, [[""]])
  assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty history" in e.value.details()


def test_labels_and_version_policy_from_a_model_config_file(base, tmp_path):
  for version in ("1", "2"):
    shutil.copytree(base / "1", tmp_path / "models" / version)
  config = tmp_path / "models.config"
  config.write_text(f"""model_config_list {{ config {{
    name: "{MODEL}" base_path: "{tmp_path / 'models'}" model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}""")
  server = Server(str(tmp_path / "server.log"), f"--model_config_file={config}")
  try:
    wait_until_available("127.0.0.1", server.rest, MODEL, timeout_s=120)
    deadline = time.monotonic() + 60
    while len(server.get(f"/v1/models/{MODEL}")["model_version_status"]) < 2 and time.monotonic() < deadline:
      time.sleep(0.5)
    assert server.get(f"/v1/models/{MODEL}/labels/canary")["model_version_status"][0]["version"] == "2"
    body = json.dumps({"instances": [{"item_ids": ["1", "2"]}]}).encode()
    assert server.post(f"/v1/models/{MODEL}/labels/stable:predict", body)[0] == 200
    assert server.get(f"/v1/models/{MODEL}/labels/stable/metadata")["model_spec"]["version"] == "1"
    assert server.post(f"/v1/models/{MODEL}/labels/nope:predict", body)[0] == 400
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc}"))
    request = _grpc_request([["1", "2"]])
    request.model_spec.version_label = "canary"
    assert stub.Predict(request, timeout=30).model_spec.version.value == 2
  finally:
    server.stop()


def _grpc_request(histories):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array(histories, dtype=object)))
  return request


def _wait_for_state(server, version, state, timeout_s=120):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    states = {int(s["version"]): s for s in server.get(f"/v1/models/{MODEL}")["model_version_status"]}
    if version in states and states[version]["state"] == state:
      return states
    time.sleep(0.3)
  raise TimeoutError(f"version {version} never reached {state}: {states}")


def test_hot_swap_under_load_fails_no_request(trained, base, batching, histories):
  stop, failures, seen = threading.Event(), [], [[] for _ in range(8)]
  stub = prediction_service_pb2_grpc.PredictionServiceStub(
      grpc.insecure_channel(f"127.0.0.1:{batching.grpc}"))

  def load(worker):
    n = 0
    while not stop.is_set():
      history = [histories[(worker + n) % len(histories)]]
      n += 1
      try:
        if worker % 2:
          seen[worker].append(stub.Predict(_grpc_request(history), timeout=30).model_spec.version.value)
        else:
          assert len(rest_predict("127.0.0.1", batching.rest, MODEL, history)["predictions"][0]["item_ids"]) == K
          seen[worker].append(None)
      except Exception as e:  # any failure at all is what this test counts
        failures.append(f"worker {worker}: {type(e).__name__}: {e}")

  threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
  for t in threads:
    t.start()
  try:
    assert export(trained, base, "--index=scann")["version"] == 2
    _wait_for_state(batching, 2, "AVAILABLE")
    broken = base / ".staging-3"  # a version whose graph is garbage, published atomically
    shutil.copytree(base / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(broken, base / "3")
    states = _wait_for_state(batching, 3, "END")
    assert states[3]["status"]["error_message"] and states[2]["state"] == "AVAILABLE"
    assert export(trained, base, "--index=brute_force")["version"] == 4
    states = _wait_for_state(batching, 4, "AVAILABLE")
    time.sleep(1.0)  # requests keep flowing after the last swap
  finally:
    stop.set()
    for t in threads:
      t.join()
  assert not failures, failures[:5]
  assert sum(map(len, seen)) > 50
  for versions in seen[1::2]:
    assert versions == sorted(versions), "a client never goes back to an older version"
    assert versions[-1] == 4
  assert states[2]["state"] == "END" and states[1]["state"] == "END"
  metrics = urllib.request.urlopen(batching.url("/monitoring/prometheus/metrics"), timeout=10).read().decode()
  assert f':tensorflow:serving:served_version{{model_name="{MODEL}"}} 4.0' in metrics


def test_deployment_configs_parse_with_tf_servings_protos(tmp_path):
  check = [sys.executable, os.path.join(cli.ROOT, "deploy", "check_configs.py")]
  assert subprocess.run(check, capture_output=True).returncode == 0
  shutil.copytree(os.path.join(cli.ROOT, "deploy"), tmp_path / "deploy")
  config = tmp_path / "deploy" / "models.config"
  config.write_text(config.read_text().replace("value: 2", "value: 7"))  # label -> unlisted version
  broken = subprocess.run(check + [str(tmp_path / "deploy")], capture_output=True, text=True)
  assert broken.returncode == 1 and "7" in broken.stdout + broken.stderr
