"""The online trainer's state: committed generations, one atomic commit each.

  state_dir/
    CURRENT                      the committed generation's name, e.g. "gen-00000007"
    generations/gen-00000007/    a build data_dir and a tfkf.train model_dir in one:
      metadata.json catalog.csv vocab/ train/ test/ dead_letter/   (beam_pipelines.build layout)
      config.json weights/final.*                                  (tfkf.train layout, Adam state too)
      state.npz                  each user's latest max_len events (encoded), decayed item counts
      ledger.json                every input file consumed so far, with its row accounting
    generations/.work-00000008/  the next generation while it is written; never read

A micro-batch writes its whole new state into a work directory, renames it to
gen-N and then points CURRENT at it (write a temporary file, fsync, rename).
The rename of CURRENT is the commit: a process killed at any moment leaves
either the old or the new generation committed, and on start everything newer
than CURRENT is deleted and redone. The ledger inside a generation names the
files it has consumed, so a file is consumed exactly once.
"""

import dataclasses
import json
import os
import shutil
from typing import Dict, List

import numpy as np
import pandas as pd

from tfkf import data_files, features
from tfkf.catalog import Catalog

CURRENT = "CURRENT"
GENERATIONS = "generations"
STATE_FILE = "state.npz"
LEDGER_FILE = "ledger.json"
HISTORY_KEYS = ("item",) + tuple(features.EVENT_FEATURES)  # encoded per-event arrays kept per user


def generation_name(number: int) -> str:
  return f"gen-{number:08d}"


@dataclasses.dataclass
class StreamState:
  """What micro-batches update besides the model. Item arrays are indexed by
  item id - NUM_RESERVED_IDS (row i is vocabulary line i)."""
  items: List[str]                   # item vocabulary: line i has id i + 2
  tags: List[str]
  authors: List[str]
  item_tag: np.ndarray               # [items] int64 tag ids
  item_author: np.ndarray            # [items] int64 author ids
  item_duration: np.ndarray          # [items] int64 duration buckets
  item_count: np.ndarray             # [items] int64 accepted events, all time
  recent_count: np.ndarray           # [items] float64 decayed counts: the logQ sampling probability
  histories: Dict[str, Dict[str, np.ndarray]]  # user -> {HISTORY_KEYS: [n <= max_len] int64}
  ledger: List[Dict]                 # consumed files in order: {"name", "size", "batch", counts}
  counts: Dict[str, int]             # cumulative accounting over the stream
  _item_ids: Dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def item_ids(self) -> Dict[str, int]:
    """item -> id over `items` (which only ever grow at the end), kept between micro-batches:
    at 10M items building it again took ~4 s of each."""
    for row in range(len(self._item_ids), len(self.items)):
      self._item_ids[self.items[row]] = row + features.NUM_RESERVED_IDS
    return self._item_ids

  def sampling_probability(self) -> np.ndarray:
    total = self.recent_count.sum() or 1.0
    return np.maximum(self.recent_count / total, 1e-9)

  def catalog(self) -> Catalog:
    """The Catalog that Catalog.load reads back from this state's files (write)."""
    lines = lambda values: len(values) + features.NUM_RESERVED_IDS  # noqa: E731
    return Catalog.of_real_items(
        self.items, self.item_tag, self.item_author, self.item_duration,
        self.sampling_probability(),
        {"item": lines(self.items), "tag": lines(self.tags), "author": lines(self.authors)})

  # -- files ---------------------------------------------------------------------
  def write(self, out: str) -> None:
    """Vocabularies, catalog.csv, state.npz and ledger.json into generation dir `out`."""
    for name, values in (("item", self.items), ("tag", self.tags), ("author", self.authors)):
      _write(os.path.join(out, data_files.vocab_path(name)), data_files.vocab_text(values))
    columns = {"index": np.arange(len(self.items)) + features.NUM_RESERVED_IDS,
               "item_id": self.items, "tag": self.item_tag, "author": self.item_author,
               "duration_bucket": self.item_duration, "count": self.item_count,
               "sampling_probability": self.sampling_probability()}
    _write(os.path.join(out, data_files.CATALOG), data_files.catalog_csv(columns))
    users = sorted(self.histories)
    arrays = {"users": np.array(users, dtype=str),
              "lengths": np.array([len(self.histories[u]["item"]) for u in users], np.int64),
              "recent_count": self.recent_count}
    for key in HISTORY_KEYS:
      arrays[f"history_{key}"] = np.concatenate(
          [np.zeros(0, np.int64)] + [self.histories[u][key] for u in users]).astype(np.int64)
    with open(os.path.join(out, STATE_FILE), "wb") as f:
      np.savez(f, **arrays)
    _write(os.path.join(out, LEDGER_FILE), json.dumps(
        {"files": self.ledger, "counts": self.counts}, indent=1, sort_keys=True))

  @classmethod
  def read(cls, gen: str) -> "StreamState":
    read_lines = lambda name: data_files.read_vocab(gen, name)
    catalog = pd.read_csv(os.path.join(gen, data_files.CATALOG), dtype=np.int64,
                          usecols=["tag", "author", "duration_bucket", "count"])
    column = lambda name: catalog[name].to_numpy(np.int64)  # noqa: E731  (11x csv.DictReader's speed)
    with np.load(os.path.join(gen, STATE_FILE)) as z:
      users, lengths = list(z["users"]), z["lengths"]
      offsets = np.concatenate([[0], np.cumsum(lengths)])
      flat = {key: z[f"history_{key}"] for key in HISTORY_KEYS}
      histories = {u: {key: flat[key][offsets[i]:offsets[i + 1]].copy() for key in HISTORY_KEYS}
                   for i, u in enumerate(users)}
      recent = z["recent_count"].astype(np.float64)
    with open(os.path.join(gen, LEDGER_FILE)) as f:
      ledger = json.load(f)
    return cls(items=read_lines("item"), tags=read_lines("tag"), authors=read_lines("author"),
               item_tag=column("tag"), item_author=column("author"),
               item_duration=column("duration_bucket"), item_count=column("count"),
               recent_count=recent, histories=histories, ledger=ledger["files"],
               counts=ledger["counts"])


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_tree(path: str) -> None:
  for root, _, files in os.walk(path):
    for name in files:
      with open(os.path.join(root, name), "rb+") as f:
        os.fsync(f.fileno())
    _fsync_dir(root)


class StateDir:
  """Generations under `root`: which one is committed, work dirs, commit and recovery."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.generations = os.path.join(self.root, GENERATIONS)

  def current(self):
    """(number, path) of the committed generation, or None before the first commit."""
    try:
      with open(os.path.join(self.root, CURRENT)) as f:
        name = f.read().strip()
    except FileNotFoundError:
      return None
    return int(name.split("-")[1]), os.path.join(self.generations, name)

  def recover(self) -> List[str]:
    """Deletes every generation dir that is not committed (work dirs, newer numbers, and
    older ones beyond the previous); returns what was deleted."""
    os.makedirs(self.generations, exist_ok=True)
    current = self.current()
    keep = set() if current is None else {generation_name(current[0]),
                                          generation_name(current[0] - 1)}
    removed = []
    for name in sorted(os.listdir(self.generations)):
      if name not in keep:
        shutil.rmtree(os.path.join(self.generations, name))
        removed.append(name)
    return removed

  def work_dir(self, number: int) -> str:
    path = os.path.join(self.generations, f".work-{number:08d}")
    if os.path.exists(path):
      shutil.rmtree(path)
    os.makedirs(path)
    return path

  def commit(self, work: str, number: int, before_pointer=lambda: None) -> str:
    """work dir -> generations/gen-N, then CURRENT -> gen-N (the commit point)."""
    _fsync_tree(work)
    final = os.path.join(self.generations, generation_name(number))
    os.rename(work, final)
    _fsync_dir(self.generations)
    before_pointer()
    tmp = os.path.join(self.root, CURRENT + ".tmp")
    with open(tmp, "w") as f:
      f.write(generation_name(number) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(self.root, CURRENT))
    _fsync_dir(self.root)
    self.recover()  # prunes generations older than the previous one
    return final


def consumed_files(gen: str) -> set:
  """Names of the files generation dir `gen` has consumed (its ledger)."""
  with open(os.path.join(gen, LEDGER_FILE)) as f:
    return {entry["name"] for entry in json.load(f)["files"]}
