"""Example client: the REST call a user copies into their own code.

  python -m serving.client --history "id1,id2,id3" --model_name=kuaiformer \
      --rest_api_port=8501 --top 10

Prints the top items with their scores and the interest (query token) that
retrieved each, exactly as the server returned them.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def rest_predict(host: str, port: int, model: str, histories, signature: str = "serving_default",
                 timeout_s: float = 30.0) -> dict:
  """Row-format predict; histories of unequal length are padded with "" as the API requires."""
  width = max(len(h) for h in histories)
  body = {"signature_name": signature,
          "instances": [{"item_ids": list(h) + [""] * (width - len(h))} for h in histories]}
  request = urllib.request.Request(
      f"http://{host}:{port}/v1/models/{model}:predict", data=json.dumps(body).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(request, timeout=timeout_s) as response:
    return json.load(response)


def wait_until_available(host: str, port: int, model: str, timeout_s: float) -> dict:
  """Polls the model status endpoint until a version is AVAILABLE."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with urllib.request.urlopen(f"http://{host}:{port}/v1/models/{model}", timeout=5) as r:
        status = json.load(r)
      if any(v["state"] == "AVAILABLE" for v in status["model_version_status"]):
        return status
    except (urllib.error.URLError, ConnectionError):
      pass
    if time.monotonic() > deadline:
      raise TimeoutError(f"model {model} not available on {host}:{port} after {timeout_s}s")
    time.sleep(0.5)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--rest_api_port", type=int, default=8501)
  p.add_argument("--model_name", default="kuaiformer")
  p.add_argument("--top", type=int, default=10, help="how many results to print")
  p.add_argument("--wait_s", type=float, default=0, help="wait for the model to become available")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  if a.wait_s:
    wait_until_available(a.host, a.rest_api_port, a.model_name, a.wait_s)
  history = [h.strip() for h in a.history.split(",") if h.strip()]
  try:
    result = rest_predict(a.host, a.rest_api_port, a.model_name, [history])
  except urllib.error.HTTPError as e:
    sys.exit(f"server answered {e.code}: {e.read().decode()}")
  top = result["predictions"][0]
  print(f"{'rank':>4}  {'item_id':>10}  {'score':>8}  interest")
  for rank, (item, score, interest) in enumerate(
      zip(top["item_ids"], top["scores"], top["interest"]), start=1):
    if rank > a.top:
      break
    print(f"{rank:>4}  {item:>10}  {score:8.4f}  {interest}")


if __name__ == "__main__":
  main()
