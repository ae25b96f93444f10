"""A bare grpcio PredictionService for bench-serving: the model call and nothing around it.

Predict decodes the inputs, calls `serving_default` and encodes the outputs on grpcio's
worker thread: no model manager, input checks, metrics or request log. Against the same
client, it tells grpcio's own cost on this machine from what serving.server adds to it.

  python -m benchmarks.bare_grpc --saved_model=DIR --port=N
"""

import argparse
import concurrent.futures

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import grpc
import scann  # noqa: F401  (registers the ScaNN ops that ScaNN exports need)
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.grpc_api import fill_tensor_proto


class BarePredict(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, signature):
    self.signature = signature

  def Predict(self, request, context):
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    response = predict_pb2.PredictResponse()
    for key, value in self.signature(**inputs).items():
      fill_tensor_proto(response.outputs[key], value.numpy())
    return response


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--saved_model", required=True, help="one version's directory")
  p.add_argument("--port", type=int, required=True)
  args = p.parse_args(argv)
  signature = tf.saved_model.load(args.saved_model).signatures["serving_default"]
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(32))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(BarePredict(signature), server)
  server.add_insecure_port(f"127.0.0.1:{args.port}")
  server.start()
  print("serving", flush=True)
  server.wait_for_termination()


if __name__ == "__main__":
  main()
