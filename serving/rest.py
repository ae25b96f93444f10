"""TF Serving's REST API on aiohttp: predict, model status, model metadata.

  POST /v1/models/{name}[/versions/{v}]:predict   {"instances": ...} or {"inputs": ...}
  GET  /v1/models/{name}[/versions/{v}]            model status
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature defs

Errors answer {"error": "..."} with 400 (bad request), 404 (unknown model,
version or signature) or 413 (body over the size limit), as TF Serving does.
"""

import asyncio
import json
import logging

from aiohttp import web
from google.protobuf import json_format
import tensorflow as tf

from serving import tensor_json
from serving.model_manager import ModelManager, ModelNotFound

log = logging.getLogger("serving.rest")
DEFAULT_SIGNATURE = "serving_default"
_MODEL = r"/v1/models/{name:[^/:]+}{version:(/versions/\d+)?}"


def error(status: int, message: str) -> web.Response:
  return web.json_response({"error": message}, status=status)


def _version(request):
  raw = request.match_info.get("version") or ""
  return int(raw.rsplit("/", 1)[1]) if raw else None


def _manager(request) -> ModelManager:
  manager = request.app["manager"]
  if request.match_info["name"] != manager.name:
    raise ModelNotFound(f"Servable not found for request: Latest({request.match_info['name']})")
  return manager


async def predict(request: web.Request) -> web.Response:
  try:
    servable = _manager(request).get(_version(request))
  except ModelNotFound as e:
    return error(404, str(e))
  try:
    body = json.loads(await request.read())
  except (ValueError, UnicodeDecodeError) as e:
    return error(400, f"JSON Parse error: {e}")
  name = (body.get("signature_name") if isinstance(body, dict) else None) or DEFAULT_SIGNATURE
  signature = servable.signatures.get(name)
  if signature is None:
    return error(404, f"Serving signature name: \"{name}\" not found in signature def")
  try:
    arrays, row_format = tensor_json.parse_request(body, signature)
    outputs = await asyncio.get_running_loop().run_in_executor(None, run_signature, signature, arrays)
  except tensor_json.BadRequest as e:
    return error(400, str(e))
  except tf.errors.InvalidArgumentError as e:
    return error(400, e.message)
  return web.json_response(tensor_json.format_response(outputs, row_format))


def run_signature(signature, arrays):
  specs = dict(signature.structured_input_signature[1])
  tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in arrays.items()}
  return {k: v.numpy() for k, v in signature(**tensors).items()}


async def status(request: web.Request) -> web.Response:
  try:
    manager = _manager(request)
  except ModelNotFound as e:
    return error(404, str(e))
  wanted = _version(request)
  # copy() is atomic under the GIL; the polling thread may add versions meanwhile.
  states = {v: s for v, s in manager.states.copy().items() if wanted in (None, v)}
  if not states:
    return error(404, f"Could not find version {wanted} of model {manager.name}")
  return web.json_response({"model_version_status": [
      {"version": str(v), "state": s.state,
       "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
      for v, s in sorted(states.items(), reverse=True)]})


async def metadata(request: web.Request) -> web.Response:
  try:
    servable = _manager(request).get(_version(request))
  except ModelNotFound as e:
    return error(404, str(e))
  defs = {k: json_format.MessageToDict(v, preserving_proto_field_name=True)
          for k, v in servable.signature_defs.items()}
  return web.json_response({
      "model_spec": {"name": request.app["manager"].name, "signature_name": "",
                     "version": str(servable.version)},
      "metadata": {"signature_def": {"signature_def": defs}}})


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


def make_app(manager: ModelManager, max_request_bytes: int = 4 << 20) -> web.Application:
  app = web.Application(middlewares=[json_errors], client_max_size=max_request_bytes)
  app["manager"] = manager
  app.router.add_post(_MODEL + ":predict", predict)
  app.router.add_get(_MODEL, status)
  app.router.add_get(_MODEL + "/metadata", metadata)
  return app
