"""TF Serving's REST API on aiohttp: predict, model status, model metadata, metrics.

  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   {"instances": ...} or {"inputs": ...}
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
  GET  /monitoring/prometheus/metrics                          Prometheus metrics

Paths under /v1/ are matched as TF Serving's http_rest_api_handler.cc matches
them (case-insensitive, query string included), so a wrong method or an
unknown path there is 400 "Malformed request". Errors answer {"error": "..."}
with TF Serving's status for each code (serving/errors.py).
"""

import asyncio
import logging
import re
import time
import urllib.parse
import zlib

from aiohttp import web
from google.protobuf import json_format
import orjson
import prometheus_client

from serving import metrics, tensor_json
from serving.errors import InvalidArgument, ServingError
from serving.limits import Limits
from serving.prediction import DEFAULT_SIGNATURE, Models, input_specs

log = logging.getLogger("serving.rest")
_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                     r"(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = 2**63 - 1


def error(status: int, message: str) -> web.Response:
  return web.json_response({"error": message}, status=status)


def _spec(name: str, version: str, label: str):
  """(name, version, label) of a path's parts, decoded and checked as TF Serving does."""
  def decode(text, what):
    try:
      return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
      raise InvalidArgument(f"Failed to decode model {what}:{text}") from None
  if version and (len(version) > 19 or int(version) > _INT64_MAX):
    raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
  return (decode(name, "name"), int(version) if version else None,
          decode(label, "version label") if label else None)


async def dispatch(request: web.Request) -> web.Response:
  """Every /v1/ request, routed by TF Serving's own path expressions."""
  path = request.raw_path
  try:
    if request.method == "POST" and (match := _PREDICT.fullmatch(path)):
      if match.group(4) != "predict":  # compared case-sensitively, as TF Serving does
        raise InvalidArgument(f"Malformed request: {request.method} {path}" if
                              match.group(4).lower() == "predict" else
                              f"{match.group(4)} is not supported: tfkf models have only predict signatures")
      return await predict(request, *_spec(*match.group(1, 2, 3)))
    if request.method == "GET" and (match := _STATUS.fullmatch(path)):
      if not match.group(1):
        raise InvalidArgument("Missing model name in request.")
      spec = _spec(*match.group(1, 2, 3))
      return metadata(request, *spec) if match.group(4) else status(request, *spec)
    raise InvalidArgument(f"Malformed request: {request.method} {path}")
  except ServingError as e:
    return error(e.http_status, str(e))


class BodyTimeout(Exception):
  """The client announced a body it does not send."""


async def _read_json(request: web.Request, limits: Limits):
  """The body as JSON, read within the body timeout and decoded by its Content-Encoding."""
  try:
    async with asyncio.timeout(limits.body_timeout_s):
      raw = await request.read()
  except TimeoutError:
    raise BodyTimeout(f"Timed out after {limits.body_timeout_s:g} s reading the request body "
                      "(--rest_api_body_timeout_in_ms)") from None
  raw = decode_body(raw, request.headers.get("Content-Encoding", "identity"), limits.max_request_bytes)
  if not raw.strip():
    raise InvalidArgument("JSON Parse error: The document is empty")
  try:
    return orjson.loads(raw)
  except orjson.JSONDecodeError as e:
    raise InvalidArgument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None


_ZLIB_FORMATS = {"gzip": (16 + zlib.MAX_WBITS,), "x-gzip": (16 + zlib.MAX_WBITS,),
                 "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}  # zlib-wrapped, or raw as some send it


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
  """A gzip or deflate body inflated to at most `limit` bytes; a false or truncated one is a 400.

  The server does this itself (aiohttp's decoder is off) so that a compressed body is
  bounded after inflation and a truncated one fails at once instead of waiting for more.
  """
  encoding = encoding.strip().lower()
  if encoding in ("", "identity"):
    return raw
  if encoding not in _ZLIB_FORMATS:
    raise InvalidArgument(f"Unsupported Content-Encoding: {encoding} (gzip, deflate or identity)")
  error = None
  for wbits in _ZLIB_FORMATS[encoding]:
    inflater = zlib.decompressobj(wbits)
    try:
      body = inflater.decompress(raw, limit + 1)
    except zlib.error as e:
      error = e
      continue
    if len(body) > limit:
      raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body),
                                          text=f"Inflated body over {limit} bytes")
    if not inflater.eof:
      raise InvalidArgument(f"Cannot read the request body: the {encoding} stream is truncated")
    return body
  raise InvalidArgument(f"Cannot read the request body: it is not {encoding} ({error})")


async def _answer_and_close(request: web.Request, status: int, message: str) -> web.Response:
  """Sends the error now and closes the connection: aiohttp would otherwise keep reading (and
  discarding) the rest of the body for its lingering time before it closes."""
  response = error(status, message)
  response.force_close()
  await response.prepare(request)
  await response.write_eof()
  request.transport.close()
  return response


async def predict(request: web.Request, name, version, label) -> web.Response:
  models: Models = request.app["models"]
  limits: Limits = request.app["limits"]
  started, code = time.perf_counter(), "OK"
  try:
    body = await _read_json(request, limits)
    signature_name = tensor_json.signature_name(body)
    servable = models.servable(name, version, label)
    signature = servable.signatures.get(signature_name or DEFAULT_SIGNATURE)
    if signature is None:
      raise InvalidArgument(f"Serving signature name: \"{signature_name or DEFAULT_SIGNATURE}\" "
                            "not found in signature def")
    arrays, row_format = tensor_json.parse_request(body, input_specs(signature), limits)
    outputs = await asyncio.wrap_future(models.run(servable, signature, arrays))
    return web.Response(body=tensor_json.dumps(tensor_json.format_response(outputs, row_format)),
                        content_type="application/json")
  except ServingError as e:
    code = e.grpc_code.name
    return error(e.http_status, str(e))
  except BodyTimeout as e:
    code = "DEADLINE_EXCEEDED"
    return await _answer_and_close(request, 408, str(e))
  except web.HTTPException:  # body over the size limit
    code = "RESOURCE_EXHAUSTED"
    raise
  except Exception:
    code = "INTERNAL"
    raise
  finally:
    label_name = models.metric_label(name)
    metrics.REQUEST_COUNT.labels(label_name, code, "REST").inc()
    metrics.REQUEST_LATENCY.labels(label_name, "predict", "REST").observe(
        (time.perf_counter() - started) * 1e6)


def status(request: web.Request, name, version, label) -> web.Response:
  statuses = request.app["models"].statuses(name, version, label)
  return web.json_response({"model_version_status": [
      {"version": str(v), "state": s.state,
       "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
      for v, s in statuses]})


def metadata(request: web.Request, name, version, label) -> web.Response:
  servable = request.app["models"].servable(name, version, label)
  defs = {k: json_format.MessageToDict(v, preserving_proto_field_name=True)
          for k, v in servable.signature_defs.items()}
  return web.json_response({
      "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
      "metadata": {"signature_def": {"signature_def": defs}}})


async def prometheus(request: web.Request) -> web.Response:
  return web.Response(body=prometheus_client.generate_latest(),
                      headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


@web.middleware
async def json_errors(request, handler):
  """Whatever goes wrong answers TF Serving's error JSON, never an HTML page."""
  try:
    return await handler(request)
  except web.HTTPException as e:
    if e.status < 400:
      raise
    if e.status == 413:
      return error(413, f"Request body too large: {e.text} (--max_request_bytes)")
    return error(e.status, e.reason)
  except Exception as e:  # A bug must not take the server down; report it as 500.
    log.exception("unhandled error on %s %s", request.method, request.raw_path)
    return error(500, f"{type(e).__name__}: {e}")


def make_app(models: Models, limits: Limits = Limits()) -> web.Application:
  app = web.Application(middlewares=[json_errors], client_max_size=limits.max_request_bytes)
  app["models"], app["limits"] = models, limits
  app.router.add_get("/monitoring/prometheus/metrics", prometheus)
  app.router.add_route("*", r"/v1/{path:[\s\S]*}", dispatch)  # decoded newlines included
  return app
