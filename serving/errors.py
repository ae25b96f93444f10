"""TF Serving's error statuses: one exception per code, with its gRPC code and HTTP status.

The HTTP statuses are TF Serving's own mapping (`ToHTTPStatusCode` in
tensorflow_serving/model_servers/http_server.cc), so REST and gRPC answer the
same failure with the same code.
"""

import grpc


class ServingError(Exception):
  """A request the server refuses; `str(e)` is the message the client gets."""
  grpc_code = grpc.StatusCode.UNKNOWN
  http_status = 500


class InvalidArgument(ServingError, ValueError):
  grpc_code, http_status = grpc.StatusCode.INVALID_ARGUMENT, 400


class FailedPrecondition(ServingError):
  grpc_code, http_status = grpc.StatusCode.FAILED_PRECONDITION, 400


class NotFound(ServingError, LookupError):
  grpc_code, http_status = grpc.StatusCode.NOT_FOUND, 404


class ResourceExhausted(ServingError):
  grpc_code, http_status = grpc.StatusCode.RESOURCE_EXHAUSTED, 429


class Unimplemented(ServingError):
  grpc_code, http_status = grpc.StatusCode.UNIMPLEMENTED, 501
