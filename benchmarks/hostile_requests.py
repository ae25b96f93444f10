"""Malformed and hostile requests for a tfkf model server, with the answer TF Serving gives each.

Shared by the hostile-input tests (tests/test_serving.py, "hostile input") and the soak
benchmark (benchmarks/soak.py). Each case names what it attacks: memory (sizes
that would expand before any check), server errors (values that once gave 500 /
UNKNOWN), or status codes (where TF Serving answers a given code and text).
Expected texts are TF Serving's (tensorflow_serving/model_servers and
util/json_tensor.cc) where it has one, else the limit's flag.
"""

import http.client
import dataclasses
import gzip
import json
import zlib
from typing import Callable, Dict, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

EVENT_INPUTS = ("is_comment", "is_follow", "is_forward", "is_like", "watch_ratio", "watch_time_s")


@dataclasses.dataclass
class RestCase:
  name: str
  path: str                      # "{model}" stands for the served model's name
  body: Optional[bytes]
  status: int
  error: str                     # a part of the {"error": ...} text
  method: str = "POST"
  headers: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GrpcCase:
  name: str
  request: Callable[[str], object]   # model name -> request message
  code: grpc.StatusCode
  details: str
  method: str = "Predict"


def _json(value) -> bytes:
  return json.dumps(value).encode()


def _rows(*histories, **extra):
  return _json({"instances": [{"item_ids": list(h)} for h in histories], **extra})


OK_BODY = _rows(["", "1", "2"])
PREDICT = "/v1/models/{model}:predict"
DEEP = 900  # below orjson's depth limit (1024), above Python's default recursion limit


def _events(**overrides):
  instance = {"item_ids": ["1", "2"], **{k: [0.0, 1.0] for k in EVENT_INPUTS}, **overrides}
  return _json({"signature_name": "serving_with_events", "instances": [instance]})


REST_CASES = [
    # -- memory: sizes a small request must not be able to ask for -----------------------
    RestCase("20,000 one-item rows", PREDICT, _json({"instances": [["1"]] * 20_000}), 400,
             "--max_request_rows"),
    RestCase("20,000 rows as columns", PREDICT, _json({"inputs": {"item_ids": [["1"]] * 20_000}}), 400,
             "--max_request_rows"),
    RestCase("a 200,000-id history", PREDICT, _json({"instances": [[str(i % 10) for i in range(200_000)]]}),
             400, "--max_tensor_values"),
    RestCase("body over the size limit", PREDICT, b"[" + b" " * (5 << 20) + b"]", 413, "--max_request_bytes"),
    RestCase("an encoding that does not exist", PREDICT, OK_BODY, 400, "Unsupported Content-Encoding: x-lie",
             headers={"Content-Encoding": "x-lie"}),
    RestCase("gzip bomb (50 MB inflated)", PREDICT,
             gzip.compress(b'{"instances": [' + b" " * (50 << 20) + b'["1"]]}'), 413,
             "--max_request_bytes", headers={"Content-Encoding": "gzip"}),
    RestCase("events of 129 rows", PREDICT, _json({"signature_name": "serving_with_events", "instances": [
        {"item_ids": ["1"], **{k: [0.0] for k in EVENT_INPUTS}}] * 129}), 400, "--max_request_rows"),
    # -- values that once answered 500 -----------------------------------------------------
    RestCase("deeply nested arrays", PREDICT, b'{"instances": ' + b"[" * DEEP + b'"1"' + b"]" * DEEP + b"}",
             400, "Encountered list at unexpected level"),
    RestCase("nesting over the parser's depth limit", PREDICT,
             b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "JSON Parse error"),
    RestCase("deeply nested objects", PREDICT,
             b'{"instances": [' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"]}", 400,
             "does not have named input: a"),
    RestCase("signature_name a number", PREDICT, _json({"signature_name": 5, "instances": [["1"]]}), 400,
             "'signature_name' key must be a string value"),
    RestCase("signature_name a list", PREDICT, _json({"signature_name": [1], "instances": [["1"]]}), 400,
             "'signature_name' key must be a string value"),
    RestCase("signature_name an object", PREDICT, _json({"signature_name": {}, "instances": [["1"]]}), 400,
             "'signature_name' key must be a string value"),
    RestCase("a 5,000-digit version", "/v1/models/{model}/versions/" + "9" * 5000 + ":predict", OK_BODY,
             400, "Failed to convert version"),
    RestCase("a version over int64", "/v1/models/{model}/versions/9223372036854775808:predict", OK_BODY,
             400, "Failed to convert version: 9223372036854775808 to numeric."),
    RestCase("status of a 5,000-digit version", "/v1/models/{model}/versions/" + "9" * 5000, None, 400,
             "Failed to convert version", method="GET"),
    RestCase("gzip that is not gzip", PREDICT, OK_BODY, 400, "Cannot read the request body",
             headers={"Content-Encoding": "gzip"}),
    RestCase("deflate that is not deflate", PREDICT, OK_BODY, 400, "Cannot read the request body",
             headers={"Content-Encoding": "deflate"}),
    RestCase("brotli, which the server cannot decode", PREDICT, OK_BODY, 400, "Unsupported Content-Encoding: br",
             headers={"Content-Encoding": "br"}),
    RestCase("truncated deflate", PREDICT, zlib.compress(OK_BODY)[:-6], 400, "stream is truncated",
             headers={"Content-Encoding": "deflate"}),
    RestCase("b64 value a number", PREDICT, _json({"instances": [[{"b64": 5}]]}), 400,
             "not formatted correctly for base64 data"),
    RestCase("b64 object with an extra key", PREDICT, _json({"instances": [[{"b64": "YQ==", "x": 1}]]}), 400,
             "not formatted correctly for base64 data"),
    RestCase("b64 not base64", PREDICT, _json({"instances": [[{"b64": "%%%"}]]}), 400,
             "Unable to base64 decode"),
    RestCase("null row", PREDICT, b'{"instances": [null]}', 400, "found at incorrect level"),
    RestCase("inputs null", PREDICT, b'{"inputs": null}', 400, "found at incorrect level"),
    RestCase("a history of numbers", PREDICT, _json({"instances": [[1, 2]]}), 400,
             "Type: Number is not of expected type: string"),
    RestCase("a history of booleans", PREDICT, _json({"instances": [[True]]}), 400,
             "Type: True is not of expected type: string"),
    RestCase("float feature sent as string", PREDICT, _events(watch_time_s=["1.5", "2"]), 400,
             'JSON Value: "1.5" Type: String is not of expected type: float'),
    RestCase("float feature sent as b64", PREDICT, _events(watch_time_s=[{"b64": "YQ=="}, 1.0]), 400,
             "Type: Object is not of expected type: float"),
    RestCase("float feature of booleans", PREDICT, _events(is_like=[True, False]), 400,
             "Type: True is not of expected type: float"),
    RestCase("rank-3 input", PREDICT, _json({"inputs": {"item_ids": [[["1"]]]}}), 400,
             "Encountered list at unexpected level"),
    RestCase("scalar input", PREDICT, _json({"inputs": {"item_ids": "1"}}), 400, "found at incorrect level"),
    # -- status codes and texts as TF Serving's -------------------------------------------
    RestCase("not JSON", PREDICT, b'{"instances": [', 400, "JSON Parse error"),
    RestCase("empty body", PREDICT, b"", 400, "JSON Parse error: The document is empty"),
    RestCase("NaN literal", PREDICT, b'{"instances": NaN}', 400, "JSON Parse error"),
    RestCase("not UTF-8", PREDICT, b'{"instances": [["\xff\xfe"]]}', 400, "JSON Parse error"),
    RestCase("a JSON array body", PREDICT, b"[1, 2]", 400, "Is not object"),
    RestCase("neither instances nor inputs", PREDICT, _json({"signature_name": "serving_default"}), 400,
             "Missing 'inputs' or 'instances' key"),
    RestCase("both instances and inputs", PREDICT, _json({"instances": [["1"]], "inputs": [["1"]]}), 400,
             "expecting only one of 'inputs' or 'instances' keys to exist"),
    RestCase("instances not a list", PREDICT, _json({"instances": "1"}), 400,
             "Excepting 'instances' to be an list/array"),
    RestCase("empty inputs", PREDICT, _json({"inputs": []}), 400, "Batch size of the inputs is 0"),
    RestCase("no instances", PREDICT, _json({"instances": []}), 400, "No values in 'instances' array"),
    RestCase("ragged instances", PREDICT, _rows(["1"], ["1", "2"]), 400, "Expecting shape [1] but got: [2]"),
    RestCase("ragged columns", PREDICT, _json({"inputs": {"item_ids": [["1"], ["1", "2"]]}}), 400,
             "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    RestCase("unknown input in a row", PREDICT, _json({"instances": [{"items": ["1"]}]}), 400,
             "does not have named input: items"),
    RestCase("row missing an input", PREDICT, _json({"signature_name": "serving_with_events",
                                                     "instances": [{"item_ids": ["1"]}]}), 400,
             "must only have keys"),
    RestCase("column missing an input", PREDICT, _json({"signature_name": "serving_with_events",
                                                        "inputs": {"item_ids": [["1"]]}}), 400,
             "Missing named input: is_comment in 'inputs' object."),
    RestCase("objects and lists mixed", PREDICT, _json({"instances": [{"item_ids": ["1"]}, ["1"]]}), 400,
             "Expecting object but got list at item 1"),
    RestCase("plain list for many inputs", PREDICT,
             _json({"signature_name": "serving_with_events", "instances": [["1"]]}), 400,
             "instances is a plain list"),
    RestCase("empty history", PREDICT, _rows([""]), 400, "empty history"),
    RestCase("unknown model", "/v1/models/nope:predict", OK_BODY, 404,
             "Servable not found for request: Latest(nope)"),
    RestCase("unknown version", "/v1/models/{model}/versions/99:predict", OK_BODY, 404,
             "Servable not found for request: Specific({model}, 99)"),
    RestCase("unknown label", "/v1/models/{model}/labels/nope:predict", OK_BODY, 400,
             "Unrecognized servable version label: nope"),
    RestCase("unknown signature", PREDICT, _rows(["1"], signature_name="nope"), 400,
             'Serving signature name: "nope" not found in signature def'),
    RestCase("status of an unknown model", "/v1/models/nope", None, 404,
             "Could not find any versions of model nope", method="GET"),
    RestCase("status of an unknown version", "/v1/models/{model}/versions/99", None, 404,
             "Could not find version 99 of model {model}", method="GET"),
    RestCase("metadata of an unknown label", "/v1/models/{model}/labels/nope/metadata", None, 400,
             "Unrecognized servable version label: nope", method="GET"),
    RestCase("PUT on a model", "/v1/models/{model}", OK_BODY, 400, "Malformed request: PUT /v1/models/{model}",
             method="PUT"),
    RestCase("DELETE on a model", "/v1/models/{model}", None, 400, "Malformed request: DELETE", method="DELETE"),
    RestCase("GET on predict", PREDICT, None, 400, "Malformed request: GET", method="GET"),
    RestCase("POST on status", "/v1/models/{model}", OK_BODY, 400, "Malformed request: POST"),
    RestCase("predict in capitals", "/v1/models/{model}:PREDICT", OK_BODY, 400, "Malformed request: POST"),
    RestCase("query string on predict", PREDICT + "?x=1", OK_BODY, 400, "Malformed request: POST"),
    RestCase("unknown path under /v1", "/v1/foo", None, 400, "Malformed request: GET /v1/foo", method="GET"),
    RestCase("models without a name", "/v1/models", None, 400, "Missing model name in request.", method="GET"),
    RestCase("classify", "/v1/models/{model}:classify", OK_BODY, 400, "classify is not supported"),
    RestCase("model name not UTF-8", "/v1/models/%ff%fe:predict", OK_BODY, 400,
             "Failed to decode model name:%ff%fe"),
    RestCase("path outside /v1", "/v2/models/{model}", None, 404, "Not Found", method="GET"),
]


# -- gRPC ---------------------------------------------------------------------------------
def _tensor(dtype, dims, **values) -> tensor_pb2.TensorProto:
  proto = tensor_pb2.TensorProto(dtype=dtype, **values)
  proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims)
  return proto


def _predict(model, inputs=None, signature="", spec=True, **spec_fields):
  request = predict_pb2.PredictRequest()
  if spec:
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in spec_fields.items():
      if key == "version":
        request.model_spec.version.value = value
      else:
        setattr(request.model_spec, key, value)
  ok = tf.make_tensor_proto(np.array([["", "1", "2"]], dtype=object))
  for key, value in (inputs if inputs is not None else {"item_ids": ok}).items():
    request.inputs[key].CopyFrom(value)
  return request


def _events_request(model, **overrides):
  inputs = {"item_ids": tf.make_tensor_proto(np.array([["1", "2"]], dtype=object)),
            **{k: tf.make_tensor_proto(np.zeros([1, 2], np.float32)) for k in EVENT_INPUTS}}
  inputs.update(overrides)
  return _predict(model, inputs, signature="serving_with_events")


def _metadata(model, fields):
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
  request.model_spec.name = model
  return request


def _status(model, version=None):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = model
  if version is not None:
    request.model_spec.version.value = version
  return request


_STRING, _FLOAT = types_pb2.DT_STRING, types_pb2.DT_FLOAT
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

GRPC_CASES = [
    # -- memory: declared shapes far larger than the values sent --------------------------
    GrpcCase("string tensor declared [1, 10^9]", lambda m: _predict(m, {"item_ids": _tensor(
        _STRING, [1, 10**9], string_val=[b"1"])}), INVALID, "--max_tensor_values"),
    GrpcCase("float tensor declared [1, 10^9]", lambda m: _events_request(m, watch_time_s=_tensor(
        _FLOAT, [1, 10**9], float_val=[1.0])), INVALID, "--max_tensor_values"),
    GrpcCase("declared [10^6, 10^6, 10^6]", lambda m: _predict(m, {"item_ids": _tensor(
        _STRING, [10**6, 10**6, 10**6], string_val=[b"1"])}), INVALID, "--max_tensor_values"),
    GrpcCase("5,000 rows", lambda m: _predict(m, {"item_ids": _tensor(_STRING, [5000, 1], string_val=[b"1"])}),
             INVALID, "--max_request_rows"),
    GrpcCase("message over the size limit", lambda m: _predict(m, {"item_ids": _tensor(
        _STRING, [1, 1], string_val=[b"x" * (5 << 20)])}), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    # -- tensors that once gave UNKNOWN ---------------------------------------------------
    GrpcCase("negative dimension", lambda m: _predict(m, {"item_ids": _tensor(_STRING, [1, -5])}), INVALID,
             "tensor parsing error: item_ids"),
    GrpcCase("unknown rank", lambda m: _predict(m, {"item_ids": tensor_pb2.TensorProto(
        dtype=_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True))}), INVALID,
             "tensor parsing error: item_ids"),
    GrpcCase("resource dtype", lambda m: _predict(m, {"item_ids": _tensor(types_pb2.DT_RESOURCE, [1, 1])}),
             INVALID, "Expects arg[0] to be string but resource is provided"),
    GrpcCase("variant dtype", lambda m: _predict(m, {"item_ids": _tensor(types_pb2.DT_VARIANT, [1, 1])}),
             INVALID, "Expects arg[0] to be string but variant is provided"),
    GrpcCase("invalid dtype number", lambda m: _predict(m, {"item_ids": _tensor(999, [1, 1])}), INVALID,
             "tensor parsing error: item_ids"),
    GrpcCase("content shorter than its shape", lambda m: _events_request(m, watch_time_s=_tensor(
        _FLOAT, [1, 2], tensor_content=b"\x00" * 3)), INVALID, "tensor parsing error: watch_time_s"),
    GrpcCase("int ids for a string input", lambda m: _predict(m, {"item_ids": tf.make_tensor_proto(
        np.array([[1, 2]], np.int32))}), INVALID, "Expects arg[0] to be string but int32 is provided"),
    GrpcCase("double for a float input", lambda m: _events_request(m, watch_time_s=tf.make_tensor_proto(
        np.zeros([1, 2], np.float64))), INVALID, "to be float but double is provided"),
    GrpcCase("rank-3 input", lambda m: _predict(m, {"item_ids": tf.make_tensor_proto(
        np.array([[["1"]]], dtype=object))}), INVALID, "must have rank 2"),
    # -- codes and texts as TF Serving's ----------------------------------------------------
    GrpcCase("no model_spec", lambda m: _predict(m, spec=False), INVALID, "Missing ModelSpec"),
    GrpcCase("empty model name", lambda m: _predict(""), INVALID, "ModelSpec has no name specified."),
    GrpcCase("unknown model", lambda m: _predict("nope"), NOT_FOUND, "Servable not found for request: Latest(nope)"),
    GrpcCase("unknown version", lambda m: _predict(m, version=99), NOT_FOUND, "Specific("),
    GrpcCase("unknown label", lambda m: _predict(m, version_label="nope"), INVALID,
             "Unrecognized servable version label: nope"),
    GrpcCase("unknown signature", lambda m: _predict(m, signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
             'Serving signature key "nope" not found.'),
    GrpcCase("missing inputs", lambda m: _predict(m, {"item_ids": tf.make_tensor_proto(
        np.array([["1"]], dtype=object))}, signature="serving_with_events"), INVALID,
             "input size does not match signature: 1!=7"),
    GrpcCase("misnamed input", lambda m: _predict(m, {"items": tf.make_tensor_proto(
        np.array([["1"]], dtype=object))}), INVALID, "input tensor alias not found in signature: items."),
    GrpcCase("unknown output filter", lambda m: _with_filter(_predict(m), ["nope"]), INVALID,
             "output tensor alias not found in signature: nope"),
    GrpcCase("duplicate output filter", lambda m: _with_filter(_predict(m), ["scores", "scores"]), INVALID,
             "duplicate output tensor alias: scores"),
    GrpcCase("empty history", lambda m: _predict(m, {"item_ids": tf.make_tensor_proto(
        np.array([[""]], dtype=object))}), INVALID, "empty history"),
    GrpcCase("metadata without a field", lambda m: _metadata(m, []), INVALID,
             "must specify at least one metadata_field", method="GetModelMetadata"),
    GrpcCase("metadata of an unsupported field", lambda m: _metadata(m, ["nope"]), INVALID,
             "Metadata field nope is not supported", method="GetModelMetadata"),
    GrpcCase("status of an unknown model", lambda m: _status("nope"), NOT_FOUND,
             "Could not find any versions of model nope", method="GetModelStatus"),
    GrpcCase("status of an unknown version", lambda m: _status(m, 99), NOT_FOUND,
             "Could not find version 99 of model", method="GetModelStatus"),
]


def _with_filter(request, names):
  request.output_filter.extend(names)
  return request


# -- sending them -------------------------------------------------------------------------
def send_rest(host: str, port: int, case: RestCase, model: str, timeout_s: float = 60.0):
  """(HTTP status, response body bytes) of one case; the connection is closed afterwards."""
  connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
  try:
    headers = {"Content-Type": "application/json", **case.headers}
    connection.request(case.method, case.path.replace("{model}", model), body=case.body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()
  finally:
    connection.close()


def send_grpc(channel: grpc.Channel, case: GrpcCase, model: str, timeout_s: float = 60.0):
  """(status code, details) of one case."""
  service = "tensorflow.serving.ModelService" if case.method == "GetModelStatus" else \
      "tensorflow.serving.PredictionService"
  request = case.request(model)
  call = channel.unary_unary(f"/{service}/{case.method}", request_serializer=type(request).SerializeToString,
                             response_deserializer=lambda raw: raw)
  try:
    call(request, timeout=timeout_s)
    return grpc.StatusCode.OK, ""
  except grpc.RpcError as e:
    return e.code(), e.details() or ""
