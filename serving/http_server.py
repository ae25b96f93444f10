"""The REST API's connections: aiohttp's HTTP/1.1 protocol with limits against slow or greedy clients.

aiohttp bounds the size of request lines and headers and closes idle keep-alive
connections, but it waits forever for headers or a body that come slowly. Here
each connection also gets:
  * a header deadline: from the first byte of a request to its last header;
  * a cap on open connections: one more is answered 429 and closed;
  * TF Serving's error JSON, not aiohttp's plain text, for requests it cannot parse.
The body deadline and the decoding of compressed bodies are the predict handler's
(serving/rest.py), which reads the body.
"""

import asyncio
import logging
from typing import Optional, Tuple

from aiohttp import http_exceptions, web
import orjson

from serving.limits import Limits

log = logging.getLogger("serving.http")


def _raw_response(status: int, reason: str, message: str) -> bytes:
  body = orjson.dumps({"error": message})
  return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class ConnectionCount:
  """Open connections of one server, against its cap."""

  def __init__(self, limit: int):
    self.limit, self.open = limit, 0

  def admit(self) -> bool:
    if self.open >= self.limit:
      return False
    self.open += 1
    return True

  def release(self) -> None:
    self.open -= 1


class GuardedRequestHandler(web.RequestHandler):
  """One connection: aiohttp's protocol plus a header deadline and a connection cap."""

  def __init__(self, manager: web.Server, *, limits: Limits, connections: ConnectionCount, **kwargs):
    super().__init__(manager, **kwargs)
    self._limits, self._connections = limits, connections
    self._deadline: Optional[asyncio.TimerHandle] = None
    self._in_request, self._refused = False, False

  # -- the connection cap -----------------------------------------------------------------
  def connection_made(self, transport: asyncio.BaseTransport) -> None:
    if not self._connections.admit():
      self._refused, self._refused_transport = True, transport
      # Answer once the request is in (closing on unread data would reset the connection
      # before the client reads the answer), or after a second if nothing comes.
      self._deadline = asyncio.get_running_loop().call_later(1.0, self._refuse)
      return
    super().connection_made(transport)

  def _refuse(self) -> None:
    if self._deadline is not None:
      self._deadline.cancel()
    transport = self._refused_transport
    if not transport.is_closing():
      transport.write(_raw_response(429, "Too Many Requests", (
          f"Too many open connections: the server accepts at most {self._limits.max_connections} "
          "(--max_concurrent_connections); retry later")))
      transport.close()

  def connection_lost(self, exc: Optional[BaseException]) -> None:
    if self._deadline is not None:
      self._deadline.cancel()
    if self._refused:
      return
    self._connections.release()
    super().connection_lost(exc)

  # -- the header deadline ----------------------------------------------------------------
  def data_received(self, data: bytes) -> None:
    if self._refused:
      self._refuse()
      return
    if not self._in_request and self._deadline is None:
      self._deadline = asyncio.get_running_loop().call_later(
          self._limits.header_timeout_s, self._headers_too_slow)
    super().data_received(data)

  def _headers_too_slow(self) -> None:
    self._deadline = None
    if self.transport is not None and not self.transport.is_closing():
      self.transport.write(_raw_response(408, "Request Timeout", (
          f"Timed out after {self._limits.header_timeout_s:g} s waiting for the request headers "
          "(--rest_api_header_timeout_in_ms)")))
      self.force_close()
      self.transport.close()

  def request_started(self) -> None:
    self._in_request = True
    if self._deadline is not None:
      self._deadline.cancel()
      self._deadline = None

  def request_finished(self) -> None:
    self._in_request = False

  # -- requests aiohttp cannot parse --------------------------------------------------------
  def handle_error(self, request, status: int = 500, exc: Optional[BaseException] = None,
                   message: Optional[str] = None) -> web.StreamResponse:
    if isinstance(exc, http_exceptions.LineTooLong):
      status, message = 431, f"{exc.message} (--max_header_bytes={self._limits.max_header_bytes})"
    elif status == 500:
      log.error("error handling a request", exc_info=exc)
      message = "Internal error"
    elif exc is not None:
      message = getattr(exc, "message", None) or message or str(exc)
    response = web.json_response({"error": message or "Bad request"}, status=status)
    response.force_close()
    return response


@web.middleware
async def _track_requests(request: web.Request, handler):
  """Tells the connection a request's headers are in (its header deadline stops) and when it ends."""
  protocol = request.protocol
  if isinstance(protocol, GuardedRequestHandler):
    protocol.request_started()
  try:
    return await handler(request)
  finally:
    if isinstance(protocol, GuardedRequestHandler):
      protocol.request_finished()


async def serve(app: web.Application, host: str, port: int, limits: Limits,
                access_log_format: str) -> Tuple[web.AppRunner, asyncio.AbstractServer]:
  """Starts `app` on host:port behind the guarded protocol: (runner, server) to close later."""
  app.middlewares.insert(0, _track_requests)
  runner = web.AppRunner(app)
  await runner.setup()
  loop = asyncio.get_running_loop()
  connections = ConnectionCount(limits.max_connections)
  protocol_args = dict(loop=loop, limits=limits, connections=connections,
                       keepalive_timeout=limits.idle_timeout_s, auto_decompress=False,
                       max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes,
                       access_log_format=access_log_format)
  server = await loop.create_server(
      lambda: GuardedRequestHandler(runner.server, **protocol_args), host, port, reuse_address=True,
      backlog=128)
  return runner, server
