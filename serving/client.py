r"""Example client: the REST and gRPC calls a user copies into their own code.

  python -m serving.client --history "id1,id2,id3" --model_name=kuaiformer \
      --rest_api_port=8501 --top 10
  python -m serving.client --history "id1,id2,id3" --model_name=kuaiformer \
      --grpc --port=8500 --top 10

Prints the top items with their scores and the interest (query token) that
retrieved each, exactly as the server returned them. The same calls work
against TF Serving and against `python -m serving.server`. REST needs only the
standard library; gRPC needs tensorflow-serving-api (and so TensorFlow).
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def pad_histories(histories):
  """Rows of equal width, as a [batch, width] string tensor must be.

  Every row starts with at least one "" (the model ignores "" wherever it is):
  TF Serving's batching (--enable_batching with pad_variable_length_inputs)
  pads each request with its first element, which must therefore be "".
  """
  width = max(len(h) for h in histories) + 1
  return [[""] * (width - len(h)) + list(h) for h in histories]


# -- REST (standard library only) ------------------------------------------------
def rest_predict(host: str, port: int, model: str, histories, signature: str = "serving_default",
                 timeout_s: float = 30.0) -> dict:
  """Row-format predict: {"predictions": [{"item_ids": [...], "scores": [...], "interest": [...]}]}."""
  return _rest_post(host, port, model, {"signature_name": signature, "instances": [
      {"item_ids": row} for row in pad_histories(histories)]}, timeout_s)


def rest_split_predict(host: str, port: int, histories, tower_model: str = "user_tower",
                       index_model: str = "item_index", timeout_s: float = 30.0) -> dict:
  """The same answer as rest_predict from the two servables of `serving.export --servable`:
  the user tower's interests, then the item index on them and the same history."""
  rows = pad_histories(histories)
  # The tower has one output: TF Serving's row format then lists its values unnamed.
  interests = _rest_post(host, port, tower_model, {"instances": [{"item_ids": r} for r in rows]},
                         timeout_s)["predictions"]
  return _rest_post(host, port, index_model, {"instances": [
      {"item_ids": r, "interests": i} for r, i in zip(rows, interests)]}, timeout_s)


def _rest_post(host: str, port: int, model: str, body: dict, timeout_s: float) -> dict:
  request = urllib.request.Request(
      f"http://{host}:{port}/v1/models/{model}:predict", data=json.dumps(body).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(request, timeout=timeout_s) as response:
    return json.load(response)


def wait_until_available(host: str, port: int, model: str, timeout_s: float) -> dict:
  """Polls the REST model status endpoint until a version is AVAILABLE."""
  def status():
    with urllib.request.urlopen(f"http://{host}:{port}/v1/models/{model}", timeout=5) as r:
      return json.load(r)
  return _wait(status, (urllib.error.URLError, ConnectionError), f"{model} on {host}:{port}",
               timeout_s)


# -- gRPC (tensorflow-serving-api) -----------------------------------------------
def grpc_predict(host: str, port: int, model: str, histories, signature: str = "serving_default",
                 timeout_s: float = 30.0, version=None) -> dict:
  """PredictionService.Predict: {output name: numpy array}, e.g. "item_ids" [batch, K] bytes.

  version: a version number, a label such as "stable", or None for the newest.
  """
  import grpc
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature
  if isinstance(version, str):
    request.model_spec.version_label = version
  elif version is not None:
    request.model_spec.version.value = version
  request.inputs["item_ids"].CopyFrom(
      tf.make_tensor_proto(pad_histories(histories), dtype=tf.string))
  with grpc.insecure_channel(f"{host}:{port}") as channel:
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, timeout=timeout_s)
  return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def grpc_model_status(host: str, port: int, model: str, timeout_s: float = 5.0) -> dict:
  """ModelService.GetModelStatus, as the same dict the REST status endpoint returns."""
  import grpc
  from google.protobuf import json_format
  from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = model
  with grpc.insecure_channel(f"{host}:{port}") as channel:
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        request, timeout=timeout_s)
  return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def grpc_wait_until_available(host: str, port: int, model: str, timeout_s: float) -> dict:
  """Polls GetModelStatus until a version is AVAILABLE."""
  import grpc
  return _wait(lambda: grpc_model_status(host, port, model), (grpc.RpcError,),
               f"{model} on {host}:{port}", timeout_s)


def _wait(get_status, retry_on, where: str, timeout_s: float) -> dict:
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      status = get_status()
      if any(v["state"] == "AVAILABLE" for v in status.get("model_version_status", [])):
        return status
    except retry_on:  # Not listening yet, or the model is not loaded yet.
      pass
    if time.monotonic() > deadline:
      raise TimeoutError(f"model {where} not available after {timeout_s}s")
    time.sleep(0.5)


# -- command line ----------------------------------------------------------------
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--grpc", action="store_true", help="call the gRPC API on --port instead of REST")
  p.add_argument("--port", type=int, default=8500, help="gRPC port (with --grpc)")
  p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (without --grpc)")
  p.add_argument("--model_name", default="kuaiformer")
  p.add_argument("--top", type=int, default=10, help="how many results to print")
  p.add_argument("--wait_s", type=float, default=0, help="wait for the model to become available")
  return p.parse_args(argv)


def predict_rows(a, history):
  """One result row {"item_ids": [str], "scores": [...], "interest": [...]} by either transport."""
  if not a.grpc:
    if a.wait_s:
      wait_until_available(a.host, a.rest_api_port, a.model_name, a.wait_s)
    try:
      return rest_predict(a.host, a.rest_api_port, a.model_name, [history])["predictions"][0]
    except urllib.error.HTTPError as e:
      sys.exit(f"server answered {e.code}: {e.read().decode()}")
    except urllib.error.URLError as e:
      sys.exit(f"cannot reach {a.host}:{a.rest_api_port}: {e.reason}")
  import grpc
  if a.wait_s:
    grpc_wait_until_available(a.host, a.port, a.model_name, a.wait_s)
  try:
    out = grpc_predict(a.host, a.port, a.model_name, [history])
  except grpc.RpcError as e:
    sys.exit(f"server answered {e.code().name}: {e.details()}")
  return {"item_ids": [i.decode() for i in out["item_ids"][0]],
          "scores": out["scores"][0].tolist(), "interest": out["interest"][0].tolist()}


def main(argv=None):
  a = parse_args(argv)
  history = [h.strip() for h in a.history.split(",") if h.strip()]
  top = predict_rows(a, history)
  print(f"{'rank':>4}  {'item_id':>10}  {'score':>8}  interest")
  for rank, (item, score, interest) in enumerate(
      zip(top["item_ids"], top["scores"], top["interest"]), start=1):
    if rank > a.top:
      break
    print(f"{rank:>4}  {item:>10}  {score:8.4f}  {interest}")


if __name__ == "__main__":
  main()
