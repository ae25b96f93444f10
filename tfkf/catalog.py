"""The item catalog written by the Beam job: ids, side features, sampling probabilities."""

import dataclasses
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tfkf import data_files, features


@dataclasses.dataclass
class Catalog:
  """Arrays indexed by item id (rows 0 = padding and 1 = OOV are placeholders)."""
  item_ids: np.ndarray              # [num_items] raw id strings ("" for reserved rows)
  tag: np.ndarray                   # [num_items] int64 tag ids
  author: np.ndarray                # [num_items] int64 author ids
  duration: np.ndarray              # [num_items] int64 duration buckets
  sampling_probability: np.ndarray  # [num_items] float32, reserved rows tiny but > 0
  vocab_sizes: dict
  # Rows of the model's item-indexed tables: num_items, or more when an online trainer keeps
  # spare rows for the ids still to come, so its model never changes shape (metadata.json
  # "item_table_rows"). Spare rows are no items: never drawn, scored or served.
  table_rows: int = None

  def __post_init__(self):
    self.table_rows = max(self.table_rows or 0, self.num_items)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def padded(self, values: np.ndarray, fill) -> np.ndarray:
    """[num_items] -> [table_rows]: the spare rows filled with `fill`."""
    return np.concatenate([values, np.full(self.table_rows - len(values), fill, values.dtype)])

  @property
  def real_items(self) -> slice:
    return slice(features.NUM_RESERVED_IDS, None)

  def varies(self, side_feature: str) -> bool:
    """Whether side feature `side_feature` ("tag", "author", "duration") takes more than
    one value over the real items (a log without an item-feature file has none)."""
    return len(np.unique(getattr(self, side_feature)[self.real_items])) > 1

  @staticmethod
  def load_table_rows(data_dir: str) -> int:
    """The table_rows of Catalog.load(data_dir), from its metadata alone."""
    return _table_rows(data_files.read_metadata(data_dir))

  @classmethod
  def load(cls, data_dir: str) -> "Catalog":
    metadata = data_files.read_metadata(data_dir)
    with tf.io.gfile.GFile(os.path.join(data_dir, data_files.CATALOG)) as f:
      table = pd.read_csv(f, dtype={"item_id": str}, keep_default_na=False)
    n = metadata["vocab_sizes"]["item"]
    if len(table) + features.NUM_RESERVED_IDS != n or (
        table["index"].to_numpy() != np.arange(features.NUM_RESERVED_IDS, n)).any():
      raise ValueError(f"{data_dir}/catalog.csv does not match metadata.json ({n} item ids)")
    return cls.of_real_items(table["item_id"], table["tag"], table["author"],
                             table["duration_bucket"], table["sampling_probability"],
                             metadata["vocab_sizes"], _table_rows(metadata))

  @classmethod
  def of_real_items(cls, item_ids, tag, author, duration, sampling_probability,
                    vocab_sizes: dict, table_rows: int = None) -> "Catalog":
    """A catalog from the real items' columns (vocabulary order): the reserved rows prepended."""
    pad = lambda values, fill, dtype: np.concatenate(  # noqa: E731
        [np.full(features.NUM_RESERVED_IDS, fill, dtype), np.asarray(values, dtype)])
    return cls(item_ids=pad(item_ids, "", object), tag=pad(tag, features.PAD_ID, np.int64),
               author=pad(author, features.PAD_ID, np.int64),
               duration=pad(duration, features.PAD_ID, np.int64),
               sampling_probability=pad(sampling_probability, 1e-9, np.float32),
               vocab_sizes=vocab_sizes, table_rows=table_rows)


def _table_rows(metadata: dict) -> int:
  return metadata.get("item_table_rows", metadata["vocab_sizes"]["item"])
