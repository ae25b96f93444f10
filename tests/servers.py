"""serving.server as a user runs it, a subprocess on free loopback ports; serving.export's CLI."""

import json
import urllib.error
import urllib.request

import cli

K = 10


class Server:
  """A serving.server subprocess on free loopback ports."""

  def __init__(self, log_path, *flags):
    self.rest, self.grpc = cli.free_port(), cli.free_port()
    self.process = cli.start("serving.server", f"--rest_api_port={self.rest}", f"--port={self.grpc}",
                             "--file_system_poll_wait_seconds=0.3", *flags, log_path=log_path)

  def url(self, path):
    return f"http://127.0.0.1:{self.rest}{path}"

  def get(self, path):
    with urllib.request.urlopen(self.url(path), timeout=10) as r:
      return json.load(r)

  def post(self, path, body: bytes):
    """(HTTP status, parsed JSON body) of a POST, errors included."""
    request = urllib.request.Request(self.url(path), data=body, method="POST")
    try:
      with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, json.load(r)
    except urllib.error.HTTPError as e:
      return e.code, json.load(e)

  def stop(self):
    self.process.terminate()
    self.process.wait(timeout=30)


def export(trained, base, *flags, subprocess: bool = False):
  """serving.export's CLI on `trained`: its result. In this worker unless `subprocess`
  (conftest's shared export runs as a user runs it)."""
  run = cli.run if subprocess else cli.run_in_process
  out = run("serving.export", f"--model_dir={trained['run']}", f"--data_dir={trained['data']}",
            f"--export_base={base}", f"--top_k={K}", *flags)
  return json.loads(out.strip().splitlines()[-1])
