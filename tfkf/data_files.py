"""The files of a data directory beside its TFRecords: metadata.json, catalog.csv and
vocab/*.txt, each with one writer (the Beam build and the online trainer both use it)
and one reader. docs/data_format.md describes them."""

import json
import os
from typing import Dict, Iterable, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfkf import features

METADATA = "metadata.json"
CATALOG = "catalog.csv"
CATALOG_COLUMNS = ("index", "item_id", "tag", "author", "duration_bucket", "count",
                   "sampling_probability")
VOCABULARIES = ("item", "tag", "author")
VOCAB_DIR = "vocab"


def vocab_file(name: str) -> str:
  return f"{name}.txt"


def vocab_path(name: str) -> str:
  return os.path.join(VOCAB_DIR, vocab_file(name))


def vocab_text(values: Iterable[str]) -> str:
  """One raw value per line: line i has id i + NUM_RESERVED_IDS."""
  return "".join(f"{v}\n" for v in values)


def read_vocab(data_dir: str, name: str):
  """vocab/<name>.txt's raw values, line i having id i + NUM_RESERVED_IDS."""
  with tf.io.gfile.GFile(os.path.join(data_dir, vocab_path(name))) as f:
    return f.read().splitlines()


def catalog_csv(columns: Dict[str, Sequence]) -> str:
  """catalog.csv from its CATALOG_COLUMNS, each a sequence (ids and counts: ints; the
  probability written as float64's repr). Column-wise: 10M rows take ~13 s, where
  csv.writer row by row took ~22 s."""
  frame = pd.DataFrame({name: columns.get(name, ()) for name in CATALOG_COLUMNS})
  frame["sampling_probability"] = frame["sampling_probability"].astype(np.float64)
  return frame.to_csv(index=False, lineterminator="\n")


def catalog_columns(rows: Iterable[Sequence]) -> Dict[str, tuple]:
  """Rows in CATALOG_COLUMNS order -> catalog_csv's columns."""
  return dict(zip(CATALOG_COLUMNS, zip(*rows)))


def metadata(flags: Dict, event_features: Sequence[str], counts: Dict, vocab_lengths: Dict[str, int],
             splits: Dict, **extra) -> dict:
  """metadata.json's content. vocab_lengths: lines of each vocabulary (VOCABULARIES)."""
  return {"schema_version": features.SCHEMA_VERSION, "flags": flags,
          "event_features": list(event_features), "counts": counts,
          "vocab_sizes": {name: vocab_lengths[name] + features.NUM_RESERVED_IDS
                          for name in VOCABULARIES},
          "splits": splits, **extra}


def metadata_json(content: dict) -> str:
  return json.dumps(content, indent=2, sort_keys=True) + "\n"


def read_metadata(data_dir: str) -> dict:
  with tf.io.gfile.GFile(os.path.join(data_dir, METADATA)) as f:
    return json.load(f)
