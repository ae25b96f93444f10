"""TF Serving's REST API on aiohttp: predict, model status, model metadata, metrics.

  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   {"instances": ...} or {"inputs": ...}
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
  GET  /monitoring/prometheus/metrics                          Prometheus metrics

Errors answer {"error": "..."} with 400 (bad request), 404 (unknown model,
version, label or signature) or 413 (body over the size limit), as TF Serving does.
"""

import asyncio
import logging
import time

from aiohttp import web
from google.protobuf import json_format
import orjson
import prometheus_client

from serving import metrics, tensor_json
from serving.prediction import InvalidArgument, Models, NotFound

log = logging.getLogger("serving.rest")
_MODEL = r"/v1/models/{name:[^/:]+}{selector:(/versions/\d+|/labels/[^/:]+)?}"


def error(status: int, message: str) -> web.Response:
  return web.json_response({"error": message}, status=status)


def _spec(request):
  """(name, version, label) from the path."""
  selector = request.match_info.get("selector") or ""
  kind, _, value = selector[1:].partition("/")
  return (request.match_info["name"], int(value) if kind == "versions" else None,
          value if kind == "labels" else None)


async def predict(request: web.Request) -> web.Response:
  name, version, label = _spec(request)
  models: Models = request.app["models"]
  started, code = time.perf_counter(), "OK"
  try:
    try:
      body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
      raise InvalidArgument(f"JSON Parse error: {e}") from None
    signature_name = body.get("signature_name") if isinstance(body, dict) else None
    servable, signature = models.signature(name, version, label, signature_name)
    arrays, row_format = tensor_json.parse_request(body, signature)
    outputs = await asyncio.wrap_future(models.run(servable, signature, arrays))
    return web.Response(body=tensor_json.dumps(tensor_json.format_response(outputs, row_format)),
                        content_type="application/json")
  except NotFound as e:
    code = "NOT_FOUND"
    return error(404, str(e))
  except InvalidArgument as e:
    code = "INVALID_ARGUMENT"
    return error(400, str(e))
  except web.HTTPException:  # body over the size limit
    code = "RESOURCE_EXHAUSTED"
    raise
  except Exception:
    code = "INTERNAL"
    raise
  finally:
    metrics.REQUEST_COUNT.labels(name, code, "REST").inc()
    metrics.REQUEST_LATENCY.labels(name, "predict", "REST").observe(
        (time.perf_counter() - started) * 1e6)


async def status(request: web.Request) -> web.Response:
  try:
    statuses = request.app["models"].statuses(*_spec(request))
  except NotFound as e:
    return error(404, str(e))
  return web.json_response({"model_version_status": [
      {"version": str(v), "state": s.state,
       "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
      for v, s in statuses]})


async def metadata(request: web.Request) -> web.Response:
  name, version, label = _spec(request)
  try:
    servable = request.app["models"].servable(name, version, label)
  except NotFound as e:
    return error(404, str(e))
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
    return error(e.status, e.reason if e.status != 413 else f"Request body too large: {e.text}")
  except Exception as e:  # A bug must not take the server down; report it as 500.
    log.exception("unhandled error on %s", request.path)
    return error(500, f"{type(e).__name__}: {e}")


def make_app(models: Models, max_request_bytes: int = 4 << 20) -> web.Application:
  app = web.Application(middlewares=[json_errors], client_max_size=max_request_bytes)
  app["models"] = models
  app.router.add_post(_MODEL + ":predict", predict)
  app.router.add_get(_MODEL, status)
  app.router.add_get(_MODEL + "/metadata", metadata)
  app.router.add_get("/monitoring/prometheus/metrics", prometheus)
  return app
