"""serving.server under hostile input, over real sockets: every malformed request gets TF Serving's
code and text, no client can make it allocate much, hold a connection, add metric series or forge a
log line, and a valid request still works after each attack."""

import gzip
import json
import re
import shutil
import socket
import time
import urllib.request
import zlib

import grpc
import pytest

import cli
from benchmarks import hostile_requests as hostile
from serving.client import grpc_predict, rest_predict, wait_until_available
from servers import Server, export

MODEL = "kuaiformer"
RSS_BOUND_BYTES = 2 << 30
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, IDLE_TIMEOUT_S, MAX_CONNECTIONS = 1.0, 1.0, 3.0, 24


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
  base = tmp_path_factory.mktemp("hostile") / "models"
  export(trained, base, "--index=brute_force")
  server = Server(str(base.parent / "server.log"), f"--model_name={MODEL}", f"--model_base_path={base}",
                  f"--rest_api_header_timeout_in_ms={int(HEADER_TIMEOUT_S * 1e3)}",
                  f"--rest_api_body_timeout_in_ms={int(BODY_TIMEOUT_S * 1e3)}",
                  f"--rest_api_idle_timeout_in_ms={int(IDLE_TIMEOUT_S * 1e3)}",
                  f"--max_concurrent_connections={MAX_CONNECTIONS}",
                  f"--grpc_channel_arguments=grpc.server_handshake_timeout_ms={int(HEADER_TIMEOUT_S * 1e3)}")
  server.log_path, server.base = base.parent / "server.log", base
  wait_until_available("127.0.0.1", server.rest, MODEL, timeout_s=120)
  yield server
  server.stop()


def still_serves(server):
  assert len(rest_predict("127.0.0.1", server.rest, MODEL, [["1", "2"]])["predictions"][0]["item_ids"]) > 0
  assert len(grpc_predict("127.0.0.1", server.grpc, MODEL, [["1", "2"]])["item_ids"][0]) > 0


def peak_rss_bytes(server) -> int:
  with open(f"/proc/{server.process.pid}/status") as f:
    return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


@pytest.mark.parametrize("case", hostile.REST_CASES, ids=lambda c: c.name)
def test_hostile_rest_request_gets_tf_servings_answer(server, case):
  status, body = hostile.send_rest("127.0.0.1", server.rest, case, MODEL)
  answer = json.loads(body)
  assert status == case.status, answer
  assert case.error.replace("{model}", MODEL) in answer["error"], answer
  still_serves(server)


@pytest.mark.parametrize("case", hostile.GRPC_CASES, ids=lambda c: c.name)
def test_hostile_grpc_request_gets_tf_servings_code(server, case):
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
    code, details = hostile.send_grpc(channel, case, MODEL)
  assert (code, case.details in details) == (case.code, True), details
  still_serves(server)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_inflated_and_served(server, encoding):
  body = hostile.OK_BODY
  packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
  case = hostile.RestCase("compressed", hostile.PREDICT, packed, 200, "", headers={"Content-Encoding": encoding})
  status, answer = hostile.send_rest("127.0.0.1", server.rest, case, MODEL)
  assert status == 200 and len(json.loads(answer)["predictions"][0]["item_ids"]) > 0


# -- slow and greedy clients ----------------------------------------------------------------
def _connect(server, port=None) -> socket.socket:
  sock = socket.create_connection(("127.0.0.1", port or server.rest), timeout=30)
  return sock


def _read_until_closed(sock) -> bytes:
  chunks = []
  while chunk := sock.recv(65536):
    chunks.append(chunk)
  return b"".join(chunks)


def _status_and_error(raw: bytes):
  head, _, body = raw.partition(b"\r\n\r\n")
  return int(head.split()[1]), json.loads(body)["error"]


def test_headers_that_never_finish_are_cut_off_with_408(server):
  sock = _connect(server)
  started = time.monotonic()
  sock.sendall(b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\n")
  raw = _read_until_closed(sock)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
  status, error = _status_and_error(raw)
  assert status == 408 and "--rest_api_header_timeout_in_ms" in error
  still_serves(server)


def test_headers_sent_a_byte_at_a_time_are_cut_off_too(server):
  sock = _connect(server)
  started, request = time.monotonic(), b"GET /v1/models/kuaiformer HTTP/1.1\r\nX-Slow: " + b"a" * 1000
  with pytest.raises((BrokenPipeError, ConnectionResetError)):
    for byte in request:  # 1000 bytes at 20 ms: 20 s if never cut off
      sock.sendall(bytes([byte]))
      time.sleep(0.02)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_a_body_shorter_than_its_content_length_gets_408(server):
  sock = _connect(server)
  started = time.monotonic()
  sock.sendall(b"POST /v1/models/kuaiformer:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
  status, error = _status_and_error(_read_until_closed(sock))
  assert time.monotonic() - started < BODY_TIMEOUT_S + 5
  assert status == 408 and "--rest_api_body_timeout_in_ms" in error
  still_serves(server)


def test_an_idle_connection_is_closed(server):
  sock = _connect(server)
  started = time.monotonic()
  assert _read_until_closed(sock) == b""
  assert IDLE_TIMEOUT_S - 0.5 < time.monotonic() - started < IDLE_TIMEOUT_S + 5


def test_oversized_headers_get_431_naming_the_limit(server):
  sock = _connect(server)
  sock.sendall(b"GET /v1/models/kuaiformer HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
  status, error = _status_and_error(_read_until_closed(sock))
  assert status == 431 and "--max_header_bytes" in error
  still_serves(server)


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
def test_bytes_that_are_not_http_get_a_400_json(server, name):
  sock = _connect(server)
  sock.sendall(NOT_HTTP[name])
  status, error = _status_and_error(_read_until_closed(sock))
  assert status == 400 and error
  still_serves(server)


def test_connections_over_the_cap_get_429_and_the_server_recovers(server):
  held = [_connect(server) for _ in range(MAX_CONNECTIONS)]
  try:
    time.sleep(0.2)
    extra = _connect(server)
    extra.sendall(b"GET /v1/models/kuaiformer HTTP/1.1\r\nHost: x\r\n\r\n")
    status, error = _status_and_error(_read_until_closed(extra))
    assert status == 429 and "--max_concurrent_connections" in error
  finally:
    for sock in held:
      sock.close()
  time.sleep(0.2)
  still_serves(server)


def test_a_grpc_connection_that_never_speaks_http2_is_closed(server):
  sock = _connect(server, server.grpc)
  started = time.monotonic()
  sock.sendall(b"PRI * HTTP/2.0\r\n")  # half a preface, then silence
  _read_until_closed(sock)
  assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
  still_serves(server)


# -- metrics and logs -----------------------------------------------------------------------
def test_unknown_model_names_add_no_metric_series(server):
  body = json.dumps({"instances": [["1"]]}).encode()
  for i in range(200):
    hostile.send_rest("127.0.0.1", server.rest, hostile.RestCase("x", f"/v1/models/attacker-{i}:predict",
                                                                 body, 404, ""), MODEL)
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
    for i in range(50):
      hostile.send_grpc(channel, hostile.GrpcCase("x", lambda _, i=i: hostile._predict(f"grpc-attacker-{i}"),
                                                  grpc.StatusCode.NOT_FOUND, ""), MODEL)
  page = urllib.request.urlopen(server.url("/monitoring/prometheus/metrics"), timeout=10).read().decode()
  assert "attacker" not in page
  assert re.search(r'request_count_total\{entrypoint="REST",model_name="<unknown>",status="NOT_FOUND"\} '
                   r'(\d+)', page), page[-2000:]
  assert len(page) < 200_000


def test_request_text_cannot_forge_a_log_line(server):
  body = json.dumps({"instances": [["1"]]}).encode()
  hostile.send_rest("127.0.0.1", server.rest, hostile.RestCase(
      "x", "/v1/models/a%0AFORGED-REST%0D%1b[31m:predict", body, 404, ""), MODEL)
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
    hostile.send_grpc(channel, hostile.GrpcCase(
        "x", lambda _: hostile._predict("b\nFORGED-GRPC\r\x1b[31m"), grpc.StatusCode.NOT_FOUND, ""), MODEL)
  time.sleep(0.5)
  log = server.log_path.read_text()
  assert "FORGED-GRPC" in log and "FORGED-REST" in log  # the requests were logged ...
  for line in log.splitlines():  # ... but inside their own lines, escaped
    assert not line.startswith("FORGED") and "\x1b" not in line and "\r" not in line


def test_soak_benchmark_smoke(server, trained, tmp_path):
  shutil.copytree(server.base, tmp_path / "models")
  out = tmp_path / "soak.json"
  cli.run("benchmarks.soak", "--seconds=12", "--warmup_s=4", "--concurrency=4", "--swaps=1",
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


def test_peak_memory_stayed_under_the_bound(server):
  """Last in this module: the server's peak RSS over every attack above."""
  still_serves(server)
  assert peak_rss_bytes(server) < RSS_BOUND_BYTES, f"peak RSS {peak_rss_bytes(server) / 2**30:.2f} GiB"
