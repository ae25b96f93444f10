"""serving.server over real sockets: REST and gRPC, batching, labels, bad input, hot swap under load;
then hostile input: every malformed request gets TF Serving's code and text, no client can make the
server allocate much, hold a connection, add metric series or forge a log line, and a valid request
still works after each attack. (One module: its tests share one trained model and export.)"""

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

import cli
from benchmarks import hostile_requests as hostile
import planted
from servers import K, Server, export
from serving.client import (grpc_model_status, grpc_predict, rest_predict, rest_split_predict,
                            wait_until_available)

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


def publish(version_dir, base, version: int):
  """Places an exported version as `serving.export` does: copied aside, renamed into place."""
  staging = base / f".staging-{version}"
  shutil.copytree(version_dir, staging)
  os.rename(staging, base / str(version))


@pytest.fixture(scope="module")
def batching(base):
  server = Server(str(base.parent / "batching.log"), f"--model_name={MODEL}",
                  f"--model_base_path={base}", "--enable_batching", "--batch_timeout_micros=20000")
  wait_until_available("127.0.0.1", server.rest, MODEL, timeout_s=120)
  yield server
  server.stop()


def test_export_matches_the_keras_model_and_refuses_a_bad_index(trained, base, scann_export, tmp_path):
  with open(base / "1" / "assets.extra" / "verification.json") as f:
    brute_force = json.load(f)
  assert brute_force["examples"] >= 100 and brute_force["identical_rows_up_to_ties"] == 1.0
  with open(scann_export / "1" / "assets.extra" / "verification.json") as f:
    scann = json.load(f)
  assert scann[f"recall@{K}"] >= 0.95, scann
  # Stock TF Serving has no ScaNN ops: the brute-force graph must not name any.
  assert b"Scann>" not in (base / "1" / "saved_model.pb").read_bytes()
  assert b"Scann>" in (scann_export / "1" / "saved_model.pb").read_bytes()
  from serving import export as exporter, verify
  with pytest.raises(verify.ExportMismatch, match="recall"):  # a threshold no index can meet
    exporter.export(trained["run"], trained["data"], str(tmp_path / "refused"), index="scann",
                    top_k=K, min_recall=1.01)
  assert not (tmp_path / "refused").exists() or not os.listdir(tmp_path / "refused"), \
      "a refused export publishes nothing"


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


def test_split_servables_answer_as_the_retriever_and_refresh_apart(trained, batching, histories,
                                                                      tmp_path):
  """The user tower and the item index, exported apart and served from one ModelServerConfig,
  give the one-model export's answer; a new tower version swaps in under load while the
  index keeps its version, and no call fails."""
  for servable in ("user_tower", "item_index"):
    result = export(trained, tmp_path / "models" / servable, f"--servable={servable}",
                    "--index=brute_force")
    assert result["verification"]["servable"] == servable
  assert result["verification"]["identical_rows_up_to_ties"] == 1.0
  # Without its warmup requests the server warms the index up on a dummy call of its own,
  # which must fit the [b, k, d] interests input.
  (tmp_path / "models" / "item_index" / "1" / "assets.extra" / "tf_serving_warmup_requests").unlink()
  config = tmp_path / "models.config"
  with open(os.path.join(cli.ROOT, "deploy", "split", "models.config")) as f:
    config.write_text(f.read().replace("/models/", f"{tmp_path / 'models'}/"))
  server = Server(str(tmp_path / "server.log"), f"--model_config_file={config}")
  try:
    for model in ("user_tower", "item_index"):
      wait_until_available("127.0.0.1", server.rest, model, timeout_s=120)
    some = histories[:8]
    split = rest_split_predict("127.0.0.1", server.rest, some)["predictions"]
    whole = rest_predict("127.0.0.1", batching.rest, MODEL, some)["predictions"]
    for a, b in zip(split, whole):
      assert a["item_ids"] == b["item_ids"]
      np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    two_users = rest_predict("127.0.0.1", server.rest, "user_tower", some[:2])["predictions"]
    mismatched = {"inputs": {"item_ids": [["", *some[0]]],
                             "interests": two_users}}
    status, body = server.post("/v1/models/item_index:predict", json.dumps(mismatched).encode())
    assert status == 400 and "batch size" in body["error"], body

    stop, failures, calls = threading.Event(), [], [0]
    def load():
      while not stop.is_set():
        try:
          got = rest_split_predict("127.0.0.1", server.rest, [some[calls[0] % len(some)]])
          assert len(got["predictions"][0]["item_ids"]) == K
        except Exception as e:  # any failure at all is what this test counts
          failures.append(f"{type(e).__name__}: {e}")
        calls[0] += 1
    caller = threading.Thread(target=load)
    caller.start()
    try:
      publish(tmp_path / "models" / "user_tower" / "1", tmp_path / "models" / "user_tower", 2)
      deadline = time.monotonic() + 120
      while time.monotonic() < deadline and not any(
          s["version"] == "2" and s["state"] == "AVAILABLE"
          for s in server.get("/v1/models/user_tower")["model_version_status"]):
        time.sleep(0.3)
      time.sleep(1.0)  # calls keep flowing after the swap
    finally:
      stop.set()
      caller.join()
    assert not failures, failures[:5]
    assert calls[0] > 5
    assert [s["version"] for s in server.get("/v1/models/user_tower")["model_version_status"]
            if s["state"] == "AVAILABLE"] == ["2"]
    assert [s["version"] for s in server.get("/v1/models/item_index")["model_version_status"]] == ["1"]
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


def test_hot_swap_under_load_fails_no_request(base, scann_export, batching, histories):
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
    publish(scann_export / "1", base, 2)  # brute force to ScaNN
    _wait_for_state(batching, 2, "AVAILABLE")
    broken = base / ".staging-3"  # a version whose graph is garbage, published atomically
    shutil.copytree(base / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(broken, base / "3")
    states = _wait_for_state(batching, 3, "END")
    assert states[3]["status"]["error_message"] and states[2]["state"] == "AVAILABLE"
    publish(base / "1", base, 4)  # and back
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


# -- hostile input ---------------------------------------------------------------------------
RSS_BOUND_BYTES = 2 << 30
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, IDLE_TIMEOUT_S, MAX_CONNECTIONS = 1.0, 1.0, 3.0, 24


@pytest.fixture(scope="module")
def hostile_server(base, tmp_path_factory):
  """A server with short deadlines and a small connection cap, on its own copy of version 1."""
  own = tmp_path_factory.mktemp("hostile") / "models"
  shutil.copytree(base / "1", own / "1")
  hostile_server = Server(str(own.parent / "server.log"), f"--model_name={MODEL}", f"--model_base_path={own}",
                          f"--rest_api_header_timeout_in_ms={int(HEADER_TIMEOUT_S * 1e3)}",
                          f"--rest_api_body_timeout_in_ms={int(BODY_TIMEOUT_S * 1e3)}",
                          f"--rest_api_idle_timeout_in_ms={int(IDLE_TIMEOUT_S * 1e3)}",
                          f"--max_concurrent_connections={MAX_CONNECTIONS}",
                          "--grpc_channel_arguments=grpc.server_handshake_timeout_ms="
                          f"{int(HEADER_TIMEOUT_S * 1e3)}")
  hostile_server.log_path, hostile_server.base = own.parent / "server.log", own
  wait_until_available("127.0.0.1", hostile_server.rest, MODEL, timeout_s=120)
  yield hostile_server
  hostile_server.stop()


def still_serves(server):
  assert len(rest_predict("127.0.0.1", server.rest, MODEL, [["1", "2"]])["predictions"][0]["item_ids"]) > 0
  assert len(grpc_predict("127.0.0.1", server.grpc, MODEL, [["1", "2"]])["item_ids"][0]) > 0


def peak_rss_bytes(server) -> int:
  with open(f"/proc/{server.process.pid}/status") as f:
    return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


@pytest.mark.parametrize("case", hostile.REST_CASES, ids=lambda c: c.name)
def test_hostile_rest_request_gets_tf_servings_answer(hostile_server, case):
  status, body = hostile.send_rest("127.0.0.1", hostile_server.rest, case, MODEL)
  answer = json.loads(body)
  assert status == case.status, answer
  assert case.error.replace("{model}", MODEL) in answer["error"], answer
  still_serves(hostile_server)


@pytest.mark.parametrize("case", hostile.GRPC_CASES, ids=lambda c: c.name)
def test_hostile_grpc_request_gets_tf_servings_code(hostile_server, case):
  with grpc.insecure_channel(f"127.0.0.1:{hostile_server.grpc}") as channel:
    code, details = hostile.send_grpc(channel, case, MODEL)
  assert (code, case.details in details) == (case.code, True), details
  still_serves(hostile_server)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_inflated_and_served(hostile_server, encoding):
  body = hostile.OK_BODY
  packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
  case = hostile.RestCase("compressed", hostile.PREDICT, packed, 200, "", headers={"Content-Encoding": encoding})
  status, answer = hostile.send_rest("127.0.0.1", hostile_server.rest, case, MODEL)
  assert status == 200 and len(json.loads(answer)["predictions"][0]["item_ids"]) > 0


# -- slow and greedy clients ----------------------------------------------------------------
def _connect(server, port=None) -> socket.socket:
  return socket.create_connection(("127.0.0.1", port or server.rest), timeout=30)


def _read_until_closed(sock) -> bytes:
  chunks = []
  while chunk := sock.recv(65536):
    chunks.append(chunk)
  return b"".join(chunks)


def _status_and_error(raw: bytes):
  head, _, body = raw.partition(b"\r\n\r\n")
  return int(head.split()[1]), json.loads(body)["error"]


def test_headers_that_never_finish_are_cut_off_with_408(hostile_server):
  sock = _connect(hostile_server)
  started = time.monotonic()
  sock.sendall(b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\n")
  raw = _read_until_closed(sock)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
  status, error = _status_and_error(raw)
  assert status == 408 and "--rest_api_header_timeout_in_ms" in error
  still_serves(hostile_server)


def test_headers_sent_a_byte_at_a_time_are_cut_off_too(hostile_server):
  sock = _connect(hostile_server)
  started, request = time.monotonic(), b"GET /v1/models/kuaiformer HTTP/1.1\r\nX-Slow: " + b"a" * 1000
  with pytest.raises((BrokenPipeError, ConnectionResetError)):
    for byte in request:  # 1000 bytes at 20 ms: 20 s if never cut off
      sock.sendall(bytes([byte]))
      time.sleep(0.02)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_a_body_shorter_than_its_content_length_gets_408(hostile_server):
  sock = _connect(hostile_server)
  started = time.monotonic()
  sock.sendall(b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
  status, error = _status_and_error(_read_until_closed(sock))
  assert time.monotonic() - started < BODY_TIMEOUT_S + 5
  assert status == 408 and "--rest_api_body_timeout_in_ms" in error
  still_serves(hostile_server)


def test_an_idle_connection_is_closed(hostile_server):
  sock = _connect(hostile_server)
  started = time.monotonic()
  assert _read_until_closed(sock) == b""
  assert IDLE_TIMEOUT_S - 0.5 < time.monotonic() - started < IDLE_TIMEOUT_S + 5


def test_oversized_headers_get_431_naming_the_limit(hostile_server):
  sock = _connect(hostile_server)
  sock.sendall(b"GET /v1/models/kuaiformer HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
  status, error = _status_and_error(_read_until_closed(sock))
  assert status == 431 and "--max_header_bytes" in error
  still_serves(hostile_server)


NOT_HTTP = {
    "TLS client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "HTTP/9.9": b"GET /v1/models/kuaiformer HTTP/9.9\r\nHost: x\r\n\r\n",
    "bad chunk size": b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "two Content-Lengths": b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
    "NUL in the path": b"GET /v1/models/kuai\x00former HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(NOT_HTTP))
def test_bytes_that_are_not_http_get_a_400_json(hostile_server, name):
  sock = _connect(hostile_server)
  sock.sendall(NOT_HTTP[name])
  status, error = _status_and_error(_read_until_closed(sock))
  assert status == 400 and error
  still_serves(hostile_server)


def test_connections_over_the_cap_get_429_and_the_server_recovers(hostile_server):
  held = [_connect(hostile_server) for _ in range(MAX_CONNECTIONS)]
  try:
    time.sleep(0.2)
    extra = _connect(hostile_server)
    extra.sendall(b"GET /v1/models/kuaiformer HTTP/1.1\r\nHost: x\r\n\r\n")
    status, error = _status_and_error(_read_until_closed(extra))
    assert status == 429 and "--max_concurrent_connections" in error
  finally:
    for sock in held:
      sock.close()
  time.sleep(0.2)
  still_serves(hostile_server)


def test_a_grpc_connection_that_never_speaks_http2_is_closed(hostile_server):
  sock = _connect(hostile_server, hostile_server.grpc)
  started = time.monotonic()
  sock.sendall(b"PRI * HTTP/2.0\r\n")  # half a preface, then silence
  _read_until_closed(sock)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
  still_serves(hostile_server)


# -- metrics and logs -----------------------------------------------------------------------
def test_unknown_model_names_add_no_metric_series(hostile_server):
  body = json.dumps({"instances": [["1"]]}).encode()
  for i in range(200):
    hostile.send_rest("127.0.0.1", hostile_server.rest, hostile.RestCase("x", f"/v1/models/attacker-{i}:predict",
                                                                 body, 404, ""), MODEL)
  with grpc.insecure_channel(f"127.0.0.1:{hostile_server.grpc}") as channel:
    for i in range(50):
      hostile.send_grpc(channel, hostile.GrpcCase("x", lambda _, i=i: hostile._predict(f"grpc-attacker-{i}"),
                                                  grpc.StatusCode.NOT_FOUND, ""), MODEL)
  page = urllib.request.urlopen(hostile_server.url("/monitoring/prometheus/metrics"), timeout=10).read().decode()
  assert "attacker" not in page
  assert re.search(r'request_count_total\{entrypoint="REST",model_name="<unknown>",status="NOT_FOUND"\} '
                   r'(\d+)', page), page[-2000:]
  assert len(page) < 200_000


def test_request_text_cannot_forge_a_log_line(hostile_server):
  body = json.dumps({"instances": [["1"]]}).encode()
  hostile.send_rest("127.0.0.1", hostile_server.rest, hostile.RestCase(
      "x", "/v1/models/a%0AFORGED-REST%0D%1b[31m:predict", body, 404, ""), MODEL)
  with grpc.insecure_channel(f"127.0.0.1:{hostile_server.grpc}") as channel:
    hostile.send_grpc(channel, hostile.GrpcCase(
        "x", lambda _: hostile._predict("b\nFORGED-GRPC\r\x1b[31m"), grpc.StatusCode.NOT_FOUND, ""), MODEL)
  time.sleep(0.5)
  log = hostile_server.log_path.read_text()
  assert "FORGED-GRPC" in log and "FORGED-REST" in log  # the requests were logged ...
  for line in log.splitlines():  # ... but inside their own lines, escaped
    assert not line.startswith("FORGED") and "\x1b" not in line and "\r" not in line


def test_soak_benchmark_smoke(hostile_server, trained, tmp_path):
  shutil.copytree(hostile_server.base, tmp_path / "models")
  out = tmp_path / "soak.json"
  cli.run("benchmarks.soak", "--seconds=12", "--warmup_s=4", "--concurrency=4", "--swaps=1",
          "--server_flag=--rest_api_header_timeout_in_ms=2000",
          "--server_flag=--rest_api_body_timeout_in_ms=2000",
          f"--export_base={tmp_path / 'models'}", f"--log={trained['log']}", f"--work_dir={tmp_path}",
          f"--output={out}")
  result = json.loads(out.read_text())
  assert result["failed_valid_requests"] == 0, result["failures_sample"]
  assert result["valid_requests"] > 20 and result["hostile_requests"] > 5 and result["slow_connections"] >= 2
  assert result["served_version_at_end"] == 2 and len(result["rss_mb"]) >= 10
  from benchmarks.report import plot_soak, render
  assert f"**{result['failed_valid_requests']}**" in render([result])
  plot_soak(result, str(tmp_path / "soak.png"))
  assert (tmp_path / "soak.png").stat().st_size > 0


def test_peak_memory_stayed_under_the_bound(hostile_server):
  """Last in this module: the hostile_server's peak RSS over every attack above."""
  still_serves(hostile_server)
  assert peak_rss_bytes(hostile_server) < RSS_BOUND_BYTES, f"peak RSS {peak_rss_bytes(hostile_server) / 2**30:.2f} GiB"
