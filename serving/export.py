"""Exports a trained KuaiFormer as a versioned SavedModel with its retrieval index.

  python -m serving.export --model_dir=runs/demo --data_dir=data/built \
      --export_base=models/kuaiformer --index=scann --top_k=100

Writes <export_base>/<version>/ atomically: built in a hidden temporary
directory beside it, checked against the Keras model (serving/verify.py),
then renamed, so a polling server never sees half a model or a bad index.
The version carries TF Serving's warmup requests (assets.extra/) and the
check's numbers (assets.extra/verification.json).

--servable=retriever (default) is one SavedModel: raw history in, top K out.
The same model can instead be served as two, each with its own versions, so that
they refresh at their own rates (docs/scaling.md §4): --servable=user_tower (raw
history -> "interests" [b, k, d]; small, re-exported as often as training moves
it) and --servable=item_index (the history's raw ids and those interests -> top K;
the whole catalog's index, rebuilt when the items change). A client calls the
tower, then the index (serving/client.py rest_split_predict); deploy/split/models.config
lists both in one ModelServerConfig.
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
from serving.retriever import (DEFAULT_MAX_HISTORY_LENGTH, ItemIndex, Retriever, UserTowerModule,
                               item_index_signatures, serving_signatures, user_tower_signatures,
                               vocabulary)

SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
WARMUP_REQUESTS = 4
SERVABLES = ("retriever", "user_tower", "item_index")


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


def write_warmup_requests(path: str, histories, interests=None) -> None:
  """TF Serving replays assets.extra/tf_serving_warmup_requests before a version takes traffic.
  histories [n, T] raw ids; interests [n, k, d] for an item index."""
  extra = os.path.join(path, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as writer:
    for i, history in enumerate(histories):
      log = prediction_log_pb2.PredictionLog()
      request = log.predict_log.request
      request.model_spec.signature_name = "serving_default"
      request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto(history[None]))
      if interests is not None:
        request.inputs["interests"].CopyFrom(tf.make_tensor_proto(interests[i:i + 1]))
      writer.write(log.SerializeToString())


def serving_module(servable: str, model, catalog: Catalog, vocab_file: str, index: str,
                   top_k: int, exclude_history: bool, max_history_length: int, item_embeddings=None):
  """(tf.Module, its signatures) of one --servable kind."""
  if servable == "user_tower":
    tower = UserTowerModule(model, vocabulary(vocab_file), max_history_length)
    return tower, user_tower_signatures(tower)
  if servable == "item_index":
    embeddings = model.item_embeddings() if item_embeddings is None else item_embeddings
    item_index = ItemIndex(vocabulary(vocab_file), catalog.item_ids, embeddings, index, top_k,
                           exclude_history, history_allowance=model.config.max_len,
                           max_history_length=max_history_length)
    return item_index, item_index_signatures(item_index)
  if servable != "retriever":
    raise ValueError(f"servable={servable!r}: one of {SERVABLES}")
  retriever = Retriever(model, vocab_file, catalog.item_ids, index=index, top_k=top_k,
                        exclude_history=exclude_history, max_history_length=max_history_length,
                        item_embeddings=item_embeddings)
  return retriever, serving_signatures(retriever)


def export(model_dir: str, data_dir: str, export_base: str, index: str = "brute_force",
           top_k: int = 100, version: int = None, exclude_history: bool = True,
           max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH, verify_examples: int = 256,
           min_recall: float = 0.95, servable: str = "retriever") -> dict:
  """Returns {"path", "version", "verification"}; raises ExportMismatch (and publishes
  nothing) if the export disagrees with the Keras model."""
  catalog = Catalog.load(data_dir)
  return export_model(load_trained(model_dir, catalog), catalog, data_dir, export_base, index,
                      top_k, version, exclude_history, max_history_length, verify_examples,
                      min_recall, servable)


def export_model(model, catalog: Catalog, data_dir: str, export_base: str,
                 index: str = "brute_force", top_k: int = 100, version: int = None,
                 exclude_history: bool = True,
                 max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH, verify_examples: int = 256,
                 min_recall: float = 0.95, servable: str = "retriever") -> dict:
  """export() of a model in memory (an online trainer's) over `catalog`, the catalog of
  `data_dir` (its vocabulary and test split)."""
  version = new_version(export_base, version)
  module, signatures = serving_module(servable, model, catalog,
                                      os.path.join(data_dir, "vocab", "item.txt"), index, top_k,
                                      exclude_history, max_history_length)
  tf.io.gfile.makedirs(export_base)
  staging = os.path.join(export_base, f".staging-{version}-{uuid.uuid4().hex[:8]}")
  tf.saved_model.save(module, staging, signatures=signatures, options=SAVE_OPTIONS)
  try:
    report = _verify(staging, servable, model, catalog, data_dir, index, top_k, exclude_history,
                     verify_examples, min_recall)
  except Exception:
    tf.io.gfile.rmtree(staging)
    raise
  final = os.path.join(export_base, str(version))
  tf.io.gfile.rename(staging, final)
  return {"path": final, "version": version, "verification": report}


# A user-tower export's interests may differ from Keras' by float summation order only.
MAX_INTEREST_DIFFERENCE = 1e-4


def _verify(staging, servable, model, catalog, data_dir, index, top_k, exclude_history, examples,
            min_recall):
  if not examples:
    return {}
  indices = verify.sample_histories(data_dir, model.config.max_len, examples)
  if servable == "user_tower":
    report = verify.compare_interests(staging, model, catalog, indices)
    if report["max_abs_difference"] > MAX_INTEREST_DIFFERENCE:
      raise verify.ExportMismatch(f"user-tower export differs from the Keras model: {report}")
  else:
    report = verify.compare(staging, model, catalog, indices, top_k, exclude_history, servable)
    report.update(index=index, min_recall=min_recall)
    if index == "brute_force" and report["identical_rows_up_to_ties"] < 1.0:
      raise verify.ExportMismatch(f"brute-force export differs from the Keras model: {report}")
    if report[f"recall@{top_k}"] < min_recall:
      raise verify.ExportMismatch(f"{index} recall@{top_k} below {min_recall}: {report}")
  warm = indices[:WARMUP_REQUESTS]
  interests = (verify.reference_interests(model, warm).numpy() if servable == "item_index"
               else None)
  write_warmup_requests(staging, verify.raw_histories(warm, catalog), interests)
  report["servable"] = servable
  with tf.io.gfile.GFile(os.path.join(staging, "assets.extra", "verification.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_dir", required=True, help="--model_dir of tfkf.train")
  p.add_argument("--data_dir", required=True, help="--output_dir of beam_pipelines.build")
  p.add_argument("--export_base", required=True, help="versions go to <export_base>/<N>/")
  p.add_argument("--servable", choices=SERVABLES, default="retriever",
                 help="retriever: one SavedModel; user_tower / item_index: the two halves, "
                      "each its own model with its own versions")
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
                  verify_examples=a.verify_examples, min_recall=a.min_recall,
                  servable=a.servable)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
