"""What one client may cost the server: sizes per request and time and count per connection.

TF Serving sets none of these (its REST server has no body limit, no timeouts
but the model run's), so each has a flag of its own, in TF Serving's naming
style, and a default that keeps a 2-core server with a demo model well under
2 GB whatever a client sends. Every refusal names the flag that set the limit.
"""

import argparse
import dataclasses
import math
from typing import Iterable

from serving.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class Limits:
  max_request_bytes: int = 4 << 20       # REST body (after decompression) or gRPC message
  max_request_rows: int = 128            # rows (the batch dimension) of one predict request
  max_tensor_values: int = 128 * 1024    # values of one input tensor, by its declared shape
  max_header_bytes: int = 8190           # one REST request or header line
  header_timeout_s: float = 10.0         # from the first byte of a REST request to its last header
  idle_timeout_s: float = 75.0           # a REST connection with no request in flight
  body_timeout_s: float = 30.0           # reading a REST body
  max_connections: int = 512             # open REST connections
  grpc_max_concurrent_rpcs: int = 512    # gRPC calls in flight or queued

  def check_rows(self, rows: int) -> None:
    if rows > self.max_request_rows:
      raise InvalidArgument(f"Request has {rows} rows; the server accepts at most "
                            f"{self.max_request_rows} per request (--max_request_rows)")

  def check_values(self, name: str, shape: Iterable[int]) -> None:
    """Before anything of that size is allocated: `shape` is what the client declared."""
    shape = list(shape)
    values = math.prod(shape)
    if values > self.max_tensor_values:
      raise InvalidArgument(f"Input {name!r} has shape {shape}, {values} values; the server accepts "
                            f"at most {self.max_tensor_values} per tensor (--max_tensor_values)")


def add_flags(parser: argparse.ArgumentParser) -> None:
  d = Limits()
  parser.add_argument("--max_request_bytes", type=int, default=d.max_request_bytes,
                      help="largest REST body (decompressed) or gRPC message accepted")
  parser.add_argument("--max_request_rows", type=int, default=d.max_request_rows,
                      help="rows (users) in one predict request")
  parser.add_argument("--max_tensor_values", type=int, default=d.max_tensor_values,
                      help="values in one input tensor, checked on its declared shape")
  parser.add_argument("--max_header_bytes", type=int, default=d.max_header_bytes,
                      help="longest REST request line or header")
  parser.add_argument("--rest_api_header_timeout_in_ms", type=int, default=int(d.header_timeout_s * 1e3),
                      help="time a REST client has to send a request's headers")
  parser.add_argument("--rest_api_idle_timeout_in_ms", type=int, default=int(d.idle_timeout_s * 1e3),
                      help="an idle keep-alive REST connection is closed after this")
  parser.add_argument("--rest_api_body_timeout_in_ms", type=int, default=int(d.body_timeout_s * 1e3),
                      help="time a REST client has to send a request's body")
  parser.add_argument("--max_concurrent_connections", type=int, default=d.max_connections,
                      help="open REST connections; more are answered 429 and closed")
  parser.add_argument("--grpc_max_concurrent_rpcs", type=int, default=d.grpc_max_concurrent_rpcs,
                      help="gRPC calls in flight; more get RESOURCE_EXHAUSTED")


def from_flags(args: argparse.Namespace) -> Limits:
  return Limits(max_request_bytes=args.max_request_bytes, max_request_rows=args.max_request_rows,
                max_tensor_values=args.max_tensor_values, max_header_bytes=args.max_header_bytes,
                header_timeout_s=args.rest_api_header_timeout_in_ms / 1e3,
                idle_timeout_s=args.rest_api_idle_timeout_in_ms / 1e3,
                body_timeout_s=args.rest_api_body_timeout_in_ms / 1e3,
                max_connections=args.max_concurrent_connections,
                grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs)
