"""Exports a trained KuaiFormer as a versioned SavedModel with its retrieval index.

  python -m serving.export --model_dir=runs/demo --data_dir=data/built \
      --export_base=models/kuaiformer --index=scann --top_k=100

Writes <export_base>/<version>/ atomically: built in a hidden temporary
directory beside it, checked against the Keras model (serving/verify.py),
then renamed, so a polling server never sees half a model or a bad index.
The version carries TF Serving's warmup requests (assets.extra/) and the
check's numbers (assets.extra/verification.json).
"""

import argparse
import json
import os
import re
import uuid

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfkf.catalog import Catalog
from tfkf.checkpoint import load_trained
from serving import verify
from serving.retriever import DEFAULT_MAX_HISTORY_LENGTH, Retriever, serving_signatures

SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
WARMUP_REQUESTS = 4


def existing_versions(export_base: str):
  if not tf.io.gfile.isdir(export_base):
    return []
  return sorted(int(d.rstrip("/")) for d in tf.io.gfile.listdir(export_base)
                if re.fullmatch(r"\d+/?", d))


def new_version(export_base: str, version: int = None) -> int:
  """`version`, or the newest under `export_base` + 1; never one that exists."""
  versions = existing_versions(export_base)
  version = version if version is not None else (versions[-1] + 1 if versions else 1)
  if version in versions:
    raise ValueError(f"version {version} already exists under {export_base}")
  return version


def write_warmup_requests(path: str, histories) -> None:
  """TF Serving replays assets.extra/tf_serving_warmup_requests before a version takes traffic."""
  extra = os.path.join(path, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as writer:
    for history in histories:
      log = prediction_log_pb2.PredictionLog()
      request = log.predict_log.request
      request.model_spec.signature_name = "serving_default"
      request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(history[None]))
      writer.write(log.SerializeToString())


def export(model_dir: str, data_dir: str, export_base: str, index: str = "brute_force",
           top_k: int = 100, version: int = None, exclude_history: bool = True,
           max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH, verify_examples: int = 256,
           min_recall: float = 0.95) -> dict:
  """Returns {"path", "version", "verification"}; raises ExportMismatch (and publishes
  nothing) if the export disagrees with the Keras model."""
  version = new_version(export_base, version)
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  retriever = Retriever(model, os.path.join(data_dir, "vocab", "item.txt"), catalog.item_ids,
                        index=index, top_k=top_k, exclude_history=exclude_history,
                        max_history_length=max_history_length)
  tf.io.gfile.makedirs(export_base)
  staging = os.path.join(export_base, f".staging-{version}-{uuid.uuid4().hex[:8]}")
  tf.saved_model.save(retriever, staging, signatures=serving_signatures(retriever),
                      options=SAVE_OPTIONS)
  try:
    report = _verify(staging, model, catalog, data_dir, index, top_k, exclude_history,
                     verify_examples, min_recall)
  except Exception:
    tf.io.gfile.rmtree(staging)
    raise
  final = os.path.join(export_base, str(version))
  tf.io.gfile.rename(staging, final)
  return {"path": final, "version": version, "verification": report}


def _verify(staging, model, catalog, data_dir, index, top_k, exclude_history, examples, min_recall):
  if not examples:
    return {}
  indices = verify.sample_histories(data_dir, model.config.max_len, examples)
  report = verify.compare(staging, model, catalog, indices, top_k, exclude_history)
  report.update(index=index, min_recall=min_recall)
  if index == "brute_force" and report["identical_rows_up_to_ties"] < 1.0:
    raise verify.ExportMismatch(f"brute-force export differs from the Keras model: {report}")
  if report[f"recall@{top_k}"] < min_recall:
    raise verify.ExportMismatch(f"{index} recall@{top_k} below {min_recall}: {report}")
  write_warmup_requests(staging, verify.raw_histories(indices[:WARMUP_REQUESTS], catalog))
  with tf.io.gfile.GFile(os.path.join(staging, "assets.extra", "verification.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_dir", required=True, help="--model_dir of tfkf.train")
  p.add_argument("--data_dir", required=True, help="--output_dir of beam_pipelines.build")
  p.add_argument("--export_base", required=True, help="versions go to <export_base>/<N>/")
  p.add_argument("--index", choices=["scann", "brute_force"], default="scann",
                 help="scann needs TF Serving with ScaNN ops (google/tf-serving-scann); "
                      "brute_force uses stock TF ops only (tensorflow/serving)")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--version", type=int, default=None, help="default: newest + 1")
  p.add_argument("--keep_history_items", action="store_true",
                 help="do not exclude items already in the history from the results")
  p.add_argument("--max_history_length", type=int, default=DEFAULT_MAX_HISTORY_LENGTH,
                 help="longer histories are rejected (InvalidArgument); the newest max_len are used")
  p.add_argument("--verify_examples", type=int, default=256,
                 help="test-split histories the export is checked on (0: skip the check)")
  p.add_argument("--min_recall", type=float, default=0.95,
                 help="least ScaNN recall@top_k against exact maxsim to publish the version")
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  result = export(a.model_dir, a.data_dir, a.export_base, a.index, a.top_k, a.version,
                  exclude_history=not a.keep_history_items, max_history_length=a.max_history_length,
                  verify_examples=a.verify_examples, min_recall=a.min_recall)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
