"""Exports a trained KuaiFormer as a versioned SavedModel with its retrieval index.

  python -m serving.export --model_dir=runs/demo --data_dir=data/built \
      --export_base=models/kuaiformer --index=scann --top_k=100

Writes <export_base>/<version>/ atomically: built in a hidden temporary
directory beside it, then renamed, so a polling server never sees half a model.
"""

import argparse
import os
import re
import uuid

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfkf.catalog import Catalog
from tfkf.train import load_trained
from serving.retriever import Retriever, serving_signatures

SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])


def existing_versions(export_base: str):
  if not tf.io.gfile.isdir(export_base):
    return []
  return sorted(int(d.rstrip("/")) for d in tf.io.gfile.listdir(export_base)
                if re.fullmatch(r"\d+/?", d))


def export(model_dir: str, data_dir: str, export_base: str, index: str = "brute_force",
           top_k: int = 100, version: int = None, exclude_history: bool = True) -> str:
  """Returns the path of the new version directory."""
  versions = existing_versions(export_base)
  version = version if version is not None else (versions[-1] + 1 if versions else 1)
  if version in versions:
    raise ValueError(f"version {version} already exists under {export_base}")
  catalog = Catalog.load(data_dir)
  model = load_trained(model_dir, catalog)
  retriever = Retriever(model, os.path.join(data_dir, "vocab", "item.txt"), catalog.item_ids,
                        index=index, top_k=top_k, exclude_history=exclude_history)
  tf.io.gfile.makedirs(export_base)
  staging = os.path.join(export_base, f".staging-{version}-{uuid.uuid4().hex[:8]}")
  tf.saved_model.save(retriever, staging, signatures=serving_signatures(retriever),
                      options=SAVE_OPTIONS)
  final = os.path.join(export_base, str(version))
  tf.io.gfile.rename(staging, final)
  return final


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
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  path = export(a.model_dir, a.data_dir, a.export_base, a.index, a.top_k, a.version,
                exclude_history=not a.keep_history_items)
  print(f"exported {path}")


if __name__ == "__main__":
  main()
