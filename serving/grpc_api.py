"""TF Serving's gRPC API on grpcio, with the tensorflow-serving-api servicers.

PredictionService: Predict, GetModelMetadata. ModelService: GetModelStatus.
Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED (the servicer base classes' default). Errors carry TF Serving's
codes and texts (serving/errors.py); an input's declared shape is checked
against the server's limits before its TensorProto is turned into an array.
"""

import concurrent.futures
import contextlib
import logging
import re
import time
from typing import Dict, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving import metrics
from serving.errors import InvalidArgument, ServingError
from serving.limits import Limits
from serving.prediction import (DEFAULT_SIGNATURE, Models, check_input_names, input_specs, type_name,
                                wrong_dtype)

log = logging.getLogger("serving.grpc")


def _spec(request):
  """(name, version, label) of a request's ModelSpec, which must name a model."""
  if not request.HasField("model_spec"):
    raise InvalidArgument("Missing ModelSpec")
  model_spec = request.model_spec
  if not model_spec.name:
    raise InvalidArgument("ModelSpec has no name specified.")
  version = model_spec.version.value if model_spec.HasField("version") else None
  return model_spec.name, version, model_spec.version_label or None


_MAX_MESSAGE = 1024  # TF Serving cuts longer gRPC error messages (grpc_status_util.cc)


@contextlib.contextmanager
def _rpc(context, models: Models, request, api: str):
  """Maps errors to gRPC codes, and counts, times and logs the call."""
  started, code = time.perf_counter(), grpc.StatusCode.OK
  name = request.model_spec.name
  try:
    yield
  except ServingError as e:
    code = e.grpc_code
    message = str(e)
    context.abort(code, message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "...TRUNCATED")
  except Exception:  # grpcio answers UNKNOWN; the metrics say INTERNAL
    code = grpc.StatusCode.INTERNAL
    log.exception("gRPC %s failed", api)
    raise
  finally:
    elapsed_us = (time.perf_counter() - started) * 1e6
    label = models.metric_label(name)
    metrics.REQUEST_COUNT.labels(label, code.name, "GRPC").inc()
    metrics.REQUEST_LATENCY.labels(label, api, "GRPC").observe(elapsed_us)
    log.info("gRPC %s model=%s status=%s %.1fms", api, name, code.name, elapsed_us / 1e3)


def fill_tensor_proto(proto, array: np.ndarray) -> None:
  """Writes `array` into an empty TensorProto: what tf.make_tensor_proto makes, at a fifth of its
  cost (the three [1, K] outputs of a predict: ~30 vs ~140 us, more on a server's cold caches)."""
  proto.dtype = (tf.string if array.dtype == object else tf.as_dtype(array.dtype)).as_datatype_enum
  proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)
  if array.dtype == object:
    proto.string_val.extend(array.ravel().tolist())
  else:
    proto.tensor_content = array.tobytes()  # C order, as TensorProto wants


def to_array(name: str, proto, specs: Dict[str, tf.TensorSpec], limits: Limits = Limits()) -> np.ndarray:
  """A request's TensorProto as an array of the signature's dtype for input `name`, refused if
  its declared shape is over the limits.

  TensorFlow fills a tensor whose repeated values are fewer than its shape with
  copies of the last one, so the declared shape, not the message, sets the size.
  """
  if proto.dtype not in types_pb2.DataType.values():
    raise InvalidArgument(f"tensor parsing error: {name}")
  if proto.dtype != specs[name].dtype.as_datatype_enum:
    raise wrong_dtype(specs, name, type_name(proto.dtype))
  dims = [d.size for d in proto.tensor_shape.dim]
  if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
    raise InvalidArgument(f"tensor parsing error: {name}")
  limits.check_values(name, dims)
  if dims:
    limits.check_rows(dims[0])
  try:
    return tf.make_ndarray(proto)
  except Exception:  # content that does not fit the shape, a dtype NumPy has no form of
    raise InvalidArgument(f"tensor parsing error: {name}") from None


def check_output_filter(names, signature) -> None:
  """A predict's output_filter names each output of the signature at most once (TF Serving's texts)."""
  known = set(signature.outputs)
  for i, key in enumerate(names):
    if key not in known:
      raise InvalidArgument(f"output tensor alias not found in signature: {key} Outputs expected "
                            f"to be in the set {{{','.join(sorted(known))}}}.")
    if key in names[:i]:
      raise InvalidArgument(f"duplicate output tensor alias: {key}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, models: Models, limits: Limits = Limits()):
    self.models, self.limits = models, limits

  def Predict(self, request, context):
    with _rpc(context, self.models, request, "predict"):
      name, version, label = _spec(request)
      servable, signature = self.models.signature(name, version, label, request.model_spec.signature_name)
      check_output_filter(list(request.output_filter), signature)
      check_input_names(request.inputs, signature)
      arrays = {k: to_array(k, v, input_specs(signature), self.limits) for k, v in request.inputs.items()}
      outputs = self.models.run_here(servable, signature, arrays)
      response = predict_pb2.PredictResponse()
      response.model_spec.name = name
      response.model_spec.version.value = servable.version
      response.model_spec.signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
      for key, value in outputs.items():
        if not request.output_filter or key in request.output_filter:
          fill_tensor_proto(response.outputs[key], value)
      return response

  def GetModelMetadata(self, request, context):
    with _rpc(context, self.models, request, "metadata"):
      name, version, label = _spec(request)
      if not request.metadata_field:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
      for field in request.metadata_field:
        if field != "signature_def":
          raise InvalidArgument(f"Metadata field {field} is not supported")
      servable = self.models.servable(name, version, label)
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = name
      response.model_spec.version.value = servable.version
      signature_map = get_model_metadata_pb2.SignatureDefMap()
      for key, value in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(value)
      response.metadata["signature_def"].Pack(signature_map)
      return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):

  def __init__(self, models: Models):
    self.models = models

  def GetModelStatus(self, request, context):
    with _rpc(context, self.models, request, "status"):
      name, version, label = _spec(request)
      response = get_model_status_pb2.GetModelStatusResponse()
      for v, state in self.models.statuses(name, version, label):
        status = response.model_version_status.add(version=v)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
        status.status.error_code = 2 if state.error else 0  # tensorflow.error.Code UNKNOWN / OK
        status.status.error_message = state.error
      return response


def parse_channel_arguments(text: str) -> Dict[str, object]:
  """TF Serving's --grpc_channel_arguments: "key=value,..."; a value that is an integer is one."""
  arguments = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
    arguments[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
  return arguments


def server_options(limits: Limits, channel_arguments: Dict[str, object]) -> List[Tuple[str, object]]:
  """Limits against greedy or slow clients, then the user's own channel arguments over them."""
  options = {
      "grpc.max_receive_message_length": limits.max_request_bytes,
      "grpc.server_handshake_timeout_ms": int(limits.header_timeout_s * 1e3),
      "grpc.max_connection_idle_ms": int(limits.idle_timeout_s * 1e3),
      # A call whose message never completes holds its connection until this age (plus grace):
      # grpcio has no per-call read deadline. Clients reconnect transparently (GOAWAY).
      "grpc.max_connection_age_ms": 300_000,
      "grpc.max_connection_age_grace_ms": int(limits.body_timeout_s * 1e3),
  }
  options.update(channel_arguments)
  return list(options.items())


def make_server(models: Models, address: str, max_workers: int = 32, limits: Limits = Limits(),
                channel_arguments: Optional[Dict[str, object]] = None) -> grpc.Server:
  """A started gRPC server on `address` ("host:port")."""
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"),
                       options=server_options(limits, channel_arguments or {}),
                       maximum_concurrent_rpcs=limits.grpc_max_concurrent_rpcs)
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServicer(models, limits), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(models), server)
  if server.add_insecure_port(address) == 0:
    raise OSError(f"cannot bind gRPC to {address}")
  server.start()
  return server
