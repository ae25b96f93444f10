"""A TF-Serving-compatible model server (REST) for tfkf SavedModels.

  python -m serving.server --model_name=kuaiformer --model_base_path=models/kuaiformer \
      --rest_api_port=8501

Flags follow tensorflow_model_server where they apply. Versions are numbered
subdirectories of --model_base_path, polled every
--file_system_poll_wait_seconds; the newest loadable one is served.
"""

import argparse
import logging
import os

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import scann  # noqa: F401  (registers the ScaNN ops that ScaNN exports need)
from aiohttp import web
import numpy as np

from serving.model_manager import ModelManager
from serving.rest import make_app, run_signature


def warmup(servable) -> None:
  """One call through every signature before a version takes traffic."""
  for signature in servable.signatures.values():
    specs = dict(signature.structured_input_signature[1])
    arrays = {k: (np.array([["__warmup__"]], dtype=object) if s.dtype.name == "string"
                  else np.zeros([1, 1], s.dtype.as_numpy_dtype)) for k, s in specs.items()}
    run_signature(signature, arrays)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_name", default="default")
  p.add_argument("--model_base_path", required=True)
  p.add_argument("--rest_api_port", type=int, default=8501)
  p.add_argument("--rest_api_host", default="127.0.0.1",
                 help="bind address (default loopback only)")
  p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
  p.add_argument("--max_request_bytes", type=int, default=4 << 20)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  manager = ModelManager(args.model_name, os.path.abspath(args.model_base_path), warmup=warmup)
  manager.poll()
  manager.start_polling(args.file_system_poll_wait_seconds)
  app = make_app(manager, args.max_request_bytes)
  web.run_app(app, host=args.rest_api_host, port=args.rest_api_port,
              print=lambda msg: logging.getLogger("serving.server").info(
                  "REST API at http://%s:%d/v1/models/%s", args.rest_api_host,
                  args.rest_api_port, args.model_name))


if __name__ == "__main__":
  main()
