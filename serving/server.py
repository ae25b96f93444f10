"""A TF-Serving-compatible model server (REST and gRPC) for tfkf SavedModels.

  python -m serving.server --model_name=kuaiformer --model_base_path=models/kuaiformer \
      --rest_api_port=8501 --port=8500 [--enable_batching]

Flags follow tensorflow_model_server where they apply. One model from
--model_name/--model_base_path, or several (with version policies and labels)
from --model_config_file, TF Serving's text-format ModelServerConfig. Versions
are polled every --file_system_poll_wait_seconds; see serving/model_manager.py.
"""

import argparse
import asyncio
import logging
import os
import signal

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import scann  # noqa: F401  (registers the ScaNN ops that ScaNN exports need)
from google.protobuf import text_format
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2
import uvloop

from serving import grpc_api, http_server, limits as server_limits
from serving.batching import BatchScheduler
from serving.model_manager import ModelConfig, ModelManager
from serving.prediction import DEFAULT_SIGNATURE, Models, run_signature
from serving.rest import make_app

log = logging.getLogger("serving.server")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def warmup(servable, path: str) -> None:
  """Replays the version's warmup requests (TF Serving's file), else one dummy call per signature."""
  records = os.path.join(path, WARMUP_FILE)
  if tf.io.gfile.exists(records):
    for raw in tf.data.TFRecordDataset(records).as_numpy_iterator():
      request = prediction_log_pb2.PredictionLog.FromString(raw).predict_log.request
      signature = servable.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
      run_signature(signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    return
  for signature in servable.signatures.values():
    run_signature(signature, {name: _dummy(spec) for name, spec in signature.inputs.items()})


def _dummy(spec: tf.TensorSpec) -> np.ndarray:
  """One request's worth of `spec`: unknown dimensions 1 (an unknown rank: [1, 1])."""
  shape = [1 if d is None else d for d in spec.shape] if spec.shape.rank is not None else [1, 1]
  if spec.dtype == tf.string:
    return np.full(shape, "__warmup__", dtype=object)
  return np.zeros(shape, spec.dtype.as_numpy_dtype)


def model_configs(args):
  if args.model_config_file:
    config = model_server_config_pb2.ModelServerConfig()
    with tf.io.gfile.GFile(args.model_config_file) as f:
      text_format.Parse(f.read(), config)
    return list(config.model_config_list.config)
  if not args.model_base_path:
    raise SystemExit("either --model_base_path or --model_config_file is required")
  return [ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_name", default="default")
  p.add_argument("--model_base_path", default=None)
  p.add_argument("--model_config_file", default=None,
                 help="text-format ModelServerConfig (names, base paths, version policies, labels)")
  p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = no gRPC)")
  p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 = no REST)")
  p.add_argument("--host", default="127.0.0.1", help="bind address of both APIs (default loopback)")
  p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
  server_limits.add_flags(p)
  p.add_argument("--grpc_channel_arguments", default="",
                 help="gRPC server arguments, key=value,... (over the limits the server sets itself)")
  p.add_argument("--enable_batching", action="store_true",
                 help="merge concurrent predict calls into batches")
  p.add_argument("--max_batch_size", type=int, default=32, help="rows per batch (with batching)")
  p.add_argument("--batch_timeout_micros", type=int, default=0,
                 help="longest wait for a batch to fill (with batching); 0 = take the calls "
                      "already queued, which batches under load without delaying a lone call")
  p.add_argument("--num_threads", type=int, default=32, help="concurrent predict calls")
  p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                 help="threads one op may use (0: TensorFlow picks, one per core)")
  p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                 help="ops run in parallel (0: TensorFlow picks)")
  return p.parse_args(argv)


class EscapingFormatter(logging.Formatter):
  """Log lines carry text from requests (model names, paths): control characters in a message are
  escaped, so no client can split a line or forge one. Tracebacks are left as they are."""

  def formatMessage(self, record: logging.LogRecord) -> str:
    if not record.message.isprintable():
      record.message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in record.message)
    return super().formatMessage(record)


def configure_logging() -> None:
  handler = logging.StreamHandler()
  handler.setFormatter(EscapingFormatter("%(asctime)s %(name)s %(message)s"))
  logging.basicConfig(level=logging.INFO, handlers=[handler])


async def serve_rest(app, args, limits, names: str) -> None:
  """Serves REST until SIGTERM or SIGINT, then closes connections and runs the app's cleanup."""
  runner, server = await http_server.serve(app, args.host, args.rest_api_port, limits,
                                           access_log_format='%a "%r" %s %b %Tfs')
  log.info("REST API at http://%s:%d/v1/models/{%s}", args.host, args.rest_api_port, names)
  stop = asyncio.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
  await stop.wait()
  server.close()
  await runner.cleanup()


def main(argv=None):
  args = parse_args(argv)
  configure_logging()
  limits = server_limits.from_flags(args)
  tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
  tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
  managers = [ModelManager(c, warmup=warmup) for c in model_configs(args)]
  for manager in managers:
    manager.poll()
    manager.start_polling(args.file_system_poll_wait_seconds)
  batcher = (BatchScheduler(args.max_batch_size, args.batch_timeout_micros / 1e6)
             if args.enable_batching else None)
  models = Models(managers, batcher, args.num_threads)
  if not (args.port or args.rest_api_port):
    raise SystemExit("--port and --rest_api_port are both 0: nothing to serve")
  grpc_server = None
  if args.port:
    grpc_server = grpc_api.make_server(models, f"{args.host}:{args.port}", args.num_threads, limits,
                                       grpc_api.parse_channel_arguments(args.grpc_channel_arguments))
    log.info("gRPC API at %s:%d", args.host, args.port)
  if not args.rest_api_port:
    grpc_server.wait_for_termination()
    return
  app = make_app(models, limits)
  if grpc_server is not None:
    app.on_cleanup.append(lambda _: asyncio.to_thread(lambda: grpc_server.stop(grace=5).wait()))
  # uvloop: libuv's event loop halves the per-request cost of the asyncio default
  # (BENCHMARKS.md "Serving latency"), most of what the server adds to a model call.
  uvloop.run(serve_rest(app, args, limits, ", ".join(m.name for m in managers)))


if __name__ == "__main__":
  main()
