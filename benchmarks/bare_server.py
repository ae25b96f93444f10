"""Bare predict servers for bench-serving: the model call and nothing around it.

`--api=grpc`: a grpcio PredictionService whose Predict decodes the inputs, calls
`serving_default` and encodes the outputs on grpcio's worker thread. `--api=rest`: an
aiohttp app on uvloop whose POST handler does the same with serving.server's JSON code,
on the event loop itself. Neither has a model manager, input checks, metrics, request log
or a hand-off to a predict thread. Against the same client, each tells what the library
costs on this machine from what serving.server adds to it.

  python -m benchmarks.bare_server --api=grpc --saved_model=DIR --port=N
"""

import argparse
import concurrent.futures

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from aiohttp import web
import grpc
import orjson
import scann  # noqa: F401  (registers the ScaNN ops that ScaNN exports need)
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
import uvloop

from serving import servable, tensor_json
from serving.grpc_api import fill_tensor_proto
from serving.prediction import input_specs, run_signature


class BarePredict(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, signature):
    self.signature = signature

  def Predict(self, request, context):
    outputs = run_signature(self.signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
      fill_tensor_proto(response.outputs[key], value)
    return response


def serve_grpc(signature, port: int) -> None:
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(32))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(BarePredict(signature), server)
  server.add_insecure_port(f"127.0.0.1:{port}")
  server.start()
  server.wait_for_termination()


def serve_rest(signature, port: int) -> None:
  async def predict(request: web.Request) -> web.Response:
    arrays, row_format = tensor_json.parse_request(orjson.loads(await request.read()), input_specs(signature))
    outputs = run_signature(signature, arrays)
    return web.Response(body=tensor_json.dumps(tensor_json.format_response(outputs, row_format)),
                        content_type="application/json")
  app = web.Application()
  app.router.add_post("/{path:.*}", predict)
  web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--api", choices=["grpc", "rest"], required=True)
  p.add_argument("--saved_model", required=True, help="one version's directory")
  p.add_argument("--port", type=int, required=True)
  args = p.parse_args(argv)
  signature = servable.load(args.saved_model).signatures["serving_default"]
  (serve_grpc if args.api == "grpc" else serve_rest)(signature, args.port)


if __name__ == "__main__":
  main()
