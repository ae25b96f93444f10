"""Composite PTransforms of the build job, one concept each.

Read → Parse (dead letters, positive filter) → Vocabularies and catalog →
Examples per user → deterministic TFRecord shards. Nothing here touches a local
path directly: files are read through `fileio` and written through Beam's file
sink (`sinks.WriteFiles`).
"""

import collections
import json
import zlib
from typing import Dict, Iterable, List, NamedTuple, Tuple

import apache_beam as beam
from apache_beam.io import fileio
import numpy as np

from beam_pipelines import formats, sinks
from tfkf import data_files, features

DEAD_LETTER = "dead_letter"
FILTERED = "filtered"
SPLITS = ("train", "valid", "test")
# Beam Metrics namespace of the build's accounting (metadata.json "counts", examples per split).
METRICS_NAMESPACE = "build"
EVENT_FIELDS = tuple(formats.event("", "", 0)) + ("order",)


def stable_shard(key: str, num_shards: int) -> int:
  return zlib.crc32(key.encode("utf-8")) % num_shards


def shard_file(shard: int, num_shards: int, suffix: str) -> str:
  """part-SSSSS-of-NNNNN<suffix>: the name of every sharded output file."""
  return f"part-{shard:05d}-of-{num_shards:05d}{suffix}"


class ReadRecords(beam.PTransform):
  """GLOB -> (path, record number, raw bytes, header) for every data record.

  Each file is read sequentially by one worker so that record numbers and the
  order of records (the time order of the sasrec format) are exact; records
  then travel in chunks through a Reshuffle so that parsing and everything
  after it spreads over all workers even for a single large file. `reader`
  maps an open binary file to (number, raw, header) tuples.
  """

  def __init__(self, pattern: str, reader, chunk_size: int = 5000):
    super().__init__()
    self.pattern = pattern
    self.reader = reader
    self.chunk_size = chunk_size

  def expand(self, pbegin):
    return (pbegin
            | "Match" >> fileio.MatchFiles(self.pattern, empty_match_treatment="DISALLOW")
            | "Open" >> fileio.ReadMatches()
            | "Chunks" >> beam.FlatMap(self._chunks)
            | "Spread" >> beam.Reshuffle()
            | "Records" >> beam.FlatMapTuple(
                lambda path, header, records: ((path, n, raw, header) for n, raw in records)))

  def _chunks(self, readable):
    """(path, header, [(number, raw), ...]): the header travels once per chunk."""
    path = readable.metadata.path
    chunk, chunk_header = [], None
    with readable.open() as f:
      for number, raw, header in self.reader(f):
        if chunk and (len(chunk) == self.chunk_size or header != chunk_header):
          yield path, chunk_header, chunk
          chunk = []
        chunk_header = header
        chunk.append((number, raw))
    if chunk:
      yield path, chunk_header, chunk


class ParseEvents(beam.PTransform):
  """Numbered lines -> events; rejects to DEAD_LETTER, negatives to FILTERED."""

  def __init__(self, format_name: str, **format_options):
    super().__init__()
    self.format_name = format_name
    self.format_options = format_options

  def expand(self, lines):
    return lines | beam.ParDo(_ParseFn(self.format_name, self.format_options)).with_outputs(
        DEAD_LETTER, FILTERED, main="events")


class _ParseFn(beam.DoFn):

  def __init__(self, format_name: str, format_options: Dict):
    self.format_cls = formats.FORMATS[format_name]
    self.format_options = format_options
    self._parsers = {}

  def process(self, element):
    path, number, raw, header = element
    try:
      parsed = self._parser(header).parse(raw)
    except (UnicodeDecodeError, formats.BadRow) as e:
      reason = "undecodable bytes (not UTF-8)" if isinstance(e, UnicodeDecodeError) else str(e)
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(path, number, raw, reason))
      return
    if not parsed.positive:
      yield beam.pvalue.TaggedOutput(FILTERED, (path, number))
      return
    parsed.event["order"] = (path, number)
    yield parsed.event

  def _parser(self, header):
    if header not in self._parsers:
      self._parsers[header] = self.format_cls(header, **self.format_options)
    return self._parsers[header]


def _dead_letter(path, number, raw: bytes, reason: str) -> Dict:
  return {"source": path, "line": number,
          "raw": raw.decode("utf-8", errors="backslashreplace"), "reason": reason}


class ReadItemFeatures(beam.PTransform):
  """Optional item CSV -> (raw item id, {tag, author, duration_s}); bad rows to dead letters."""

  def __init__(self, pattern: str):
    super().__init__()
    self.pattern = pattern

  def expand(self, pbegin):
    return (pbegin
            | "ReadItemLines" >> ReadRecords(self.pattern, _item_records)
            | "ParseItems" >> beam.ParDo(_ParseItemFn()).with_outputs(DEAD_LETTER, main="items"))


class _ParseItemFn(beam.DoFn):

  def process(self, element):
    path, number, raw, header = element
    try:
      yield formats.parse_item_row(header, raw)
    except formats.BadRow as e:
      yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(path, number, raw, str(e)))


class _ItemFile(formats.LineFormat):
  header_of = staticmethod(formats.item_header_of)


_item_records = _ItemFile.records


class CountGlobally(beam.PTransform):
  """PCollection -> one element, its size; also counted in the Beam Metrics counter
  METRICS_NAMESPACE/`name`, which a runner's UI shows while the job runs."""

  def __init__(self, name: str):
    super().__init__()
    self.name = name

  def expand(self, pcoll):
    return (pcoll
            | "Meter" >> beam.ParDo(_MeterFn(self.name))
            | "Count" >> beam.combiners.Count.Globally())


class _MeterFn(beam.DoFn):

  def __init__(self, name: str):
    self.counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)

  def process(self, element):
    self.counter.inc()
    yield element


class BuildVocabulary(beam.PTransform):
  """Raw values -> singleton [(value, count)] in id order (most frequent first).

  Id of entry i is i + NUM_RESERVED_IDS; values seen fewer than `min_count`
  times are left out and map to OOV.
  """

  def __init__(self, min_count: int = 1):
    super().__init__()
    self.min_count = min_count

  def expand(self, values):
    min_count = self.min_count
    return (values
            | "Count" >> beam.combiners.Count.PerElement()
            | "Keep" >> beam.Filter(lambda kv: kv[1] >= min_count)
            | "Collect" >> beam.combiners.ToList()
            | "Order" >> beam.Map(vocab_order))


def vocab_order(counts: Iterable) -> List:
  """(value, count) pairs in id order: most frequent first, ties by value."""
  return sorted(counts, key=lambda kv: (-kv[1], kv[0]))


def vocab_ids(values: Iterable) -> Dict:
  """Values in id order -> {value: id}; ids start after the reserved PAD and OOV."""
  return {v: i + features.NUM_RESERVED_IDS for i, v in enumerate(values)}


def build_catalog(item_vocab, item_features, event_durations, training_counts) -> List[Dict]:
  """Catalog rows for every vocabulary item, in id order.

  count: the item's events outside the held-out splits (`training_counts`), so that logQ's
  sampling probability never counts a valid or test target; an item seen only there has 0.
  """
  counts = [training_counts.get(item, 0) for item, _ in item_vocab]
  total = float(sum(counts)) or 1.0
  rows = []
  for i, ((item, _), count) in enumerate(zip(item_vocab, counts)):
    side = item_features.get(item, {})
    duration = side.get("duration_s") or event_durations.get(item)
    rows.append({
        "index": i + features.NUM_RESERVED_IDS, "item_id": item,
        "tag": side.get("tag"), "author": side.get("author"),
        "duration_s": duration, "count": count,
        "sampling_probability": count / total})
  return rows


def vocab_of(values: Iterable) -> List[str]:
  """Distinct non-empty values in id order (see vocab_order)."""
  return [v for v, _ in vocab_order(collections.Counter(v for v in values if v).items())]


class LastEvents:
  """Per user: the last `n` targets → test, the `n` before them → valid, the rest →
  train (users with fewer than 2n + 1 events: all train). Each held-out target's
  history holds every earlier event, held-out ones included."""

  def __init__(self, n: int = 1):
    if n < 1:
      raise ValueError(f"--holdout_events {n} must be at least 1")
    self.n = n

  def __call__(self, events: List[Dict]) -> List[str]:
    total, n = len(events), self.n
    if total < 2 * n + 1:
      return ["train"] * total
    return ["train" if p < total - 2 * n else ("valid" if p < total - n else "test")
            for p in range(total)]


class LeaveOneOut(LastEvents):
  """Per user: last target → test, second-to-last → valid, the rest → train
  (users with fewer than 3 events: all train). The SASRec protocol."""

  def __init__(self):
    super().__init__(1)


class TimeSplit:
  """Targets before `valid_time` → train, in [valid_time, split_time) → valid,
  from `split_time` on → test. Histories may hold any earlier event."""

  def __init__(self, split_time: int, valid_time: int = None):
    self.split_time = split_time
    self.valid_time = split_time if valid_time is None else valid_time
    if self.valid_time > self.split_time:
      raise ValueError(f"--valid_time {valid_time} is after --split_time {split_time}")

  def __call__(self, events: List[Dict]) -> List[str]:
    return ["train" if e["time"] < self.valid_time else
            ("valid" if e["time"] < self.split_time else "test") for e in events]


def time_ordered(events: List[Dict]) -> List[Dict]:
  """A user's events in time order, ties in log order (source file, line)."""
  return sorted(events, key=lambda e: (e["time"], e["order"]))


def encode_events(events: List[Dict], item_index: Dict[str, int]) -> Dict[str, np.ndarray]:
  """Sorted events -> id and bucket arrays, through tfkf.features."""
  encoded = {"item": np.array([item_index.get(e["item"], features.OOV_ID) for e in events], np.int64)}
  for name, encoding in features.EVENT_FEATURES.items():
    raw = np.array([e[features.EVENT_RAW_INPUTS[name]] for e in events], np.float64)
    encoded[name] = encoding.to_numpy(raw)
  return encoded


class Example(NamedTuple):
  split: str
  user: str
  position: int       # index of the target in the user's sorted events
  history_len: int
  payload: bytes      # serialized tf.train.Example


def user_examples(user_events, item_index, max_len, stride, max_examples_per_user,
                  split_fn=LeaveOneOut(), chunks: bool = False) -> Iterable[Example]:
  """A user's examples: every stride-th training target (latest first), then the held-out ones.

  chunks: the training examples are chunks of `stride` targets (docs/data_format.md,
  "Layouts"): one is kept even when its own target is out of vocabulary, as the
  chunk's other targets are not.
  """
  user, events = user_events
  events = time_ordered(events)
  # Python lists: slicing them and filling protos is far faster than from NumPy scalars.
  enc = {name: values.tolist() for name, values in encode_events(events, item_index).items()}
  splits = split_fn(events)
  train = [p for p in range(1, len(events)) if splits[p] == "train"]
  train = train[::-1][::stride][:max_examples_per_user][::-1]
  held_out = [p for p in range(1, len(events)) if splits[p] != "train"]
  for p in train + held_out:
    if enc["item"][p] == features.OOV_ID and not (chunks and splits[p] == "train"):
      continue  # An item below --min_item_count cannot be a target.
    start = max(0, p - max_len)
    yield Example(splits[p], user, p, p - start,
                  example_bytes(user, events[p]["time"], enc, start, p))


def example_bytes(user: str, time: int, enc: Dict[str, list], start: int, target: int,
                  num_targets: int = None) -> bytes:
  """One tf.train.Example: the target and the events [start, target) before it (and, given,
  how many trailing targets it supervises: features.NUM_TARGETS)."""
  import tensorflow as tf  # Deferred: workers that never build examples skip the import.
  example = tf.train.Example()
  f = example.features.feature
  f[features.USER_ID].bytes_list.value.append(user.encode())
  f[features.TARGET_TIME].int64_list.value.append(time)
  f[features.TARGET_ITEM].int64_list.value.append(enc["item"][target])
  if num_targets is not None:
    f[features.NUM_TARGETS].int64_list.value.append(num_targets)
  f[features.HISTORY_ITEM].int64_list.value.extend(enc["item"][start:target])
  for name in features.EVENT_FEATURES:
    f[features.history_key(name)].int64_list.value.extend(enc[name][start:target])
  # deterministic: map entries sorted, else their order varies between processes.
  return example.SerializeToString(deterministic=True)


class WriteExampleShards(beam.PTransform):
  """Events -> TFRecord shards of examples per split.

  Users go to `num_shards` shards by a stable hash of their id. One worker
  builds a whole shard: its users in sorted order, each user's examples in
  time order (see `user_examples`). Examples never cross a shuffle, and the
  files are byte-identical whatever the runner or its parallelism; they are
  written through Beam's file sink (`sinks.WriteFiles`). Files:
  <output_dir>/<split>/part-SSSSS-of-NNNNN.tfrecord, every split of every shard.
  Output: {"history_lens": (split, history length) per example,
  "training_counts": (raw item id, its events in the train split),
  "written": each file's fileio.FileResult}; Beam Metrics METRICS_NAMESPACE/examples_<split>.
  """

  def __init__(self, output_dir: str, num_shards: int, item_index, max_len: int, stride: int,
               max_examples_per_user: int, split_fn=LeaveOneOut(), chunks: bool = False,
               temp_directory: str = None):
    super().__init__()
    self.output_dir = output_dir
    self.num_shards = num_shards
    self.item_index = item_index
    self.split_fn = split_fn
    self.example_args = (max_len, stride, max_examples_per_user, split_fn, chunks)
    self.temp_directory = temp_directory

  def expand(self, events):
    n = self.num_shards
    # Events cross the shuffle as tuples in EVENT_FIELDS order: dict keys would be
    # encoded with every element.
    shards = (events
              | "KeyByShard" >> beam.Map(lambda e: (stable_shard(e["user"], n),
                                                    tuple(e[k] for k in EVENT_FIELDS)))
              | "GroupByShard" >> beam.GroupByKey()
              | "Build" >> beam.FlatMap(self._shard, beam.pvalue.AsSingleton(self.item_index))
              .with_output_types(Tuple[str, int])  # the main output; files are tagged
              .with_outputs(_SHARD_FILES, _TRAINING_COUNTS, main="history_lens"))
    written = []
    for split in SPLITS:
      written.append(
          shards[_SHARD_FILES]
          | f"Only{split.title()}" >> beam.Filter(lambda f, s=split: f[0] == s)
          | f"Name{split.title()}" >> beam.Map(lambda f: f[1:]).with_output_types(
              Tuple[str, List[bytes]])
          | f"Write{split.title()}" >> sinks.WriteFiles(
              f"{self.output_dir}/{split}", sinks.TFRecordFileSink, self.temp_directory))
    return {"history_lens": shards.history_lens,
            "training_counts": shards[_TRAINING_COUNTS] | "SumCounts" >> beam.CombinePerKey(sum),
            "written": tuple(written) | "AllWritten" >> beam.Flatten()}

  def _shard(self, shard_events, item_index):
    shard, events = shard_events
    by_user = collections.defaultdict(list)
    for row in events:
      e = dict(zip(EVENT_FIELDS, row))
      by_user[e["user"]].append(e)
    payloads = {split: [] for split in SPLITS}
    training_counts = collections.Counter()
    for user in sorted(by_user):
      events = time_ordered(by_user[user])  # sorted once: the two sorts below are then linear
      for ex in user_examples((user, events), item_index, *self.example_args):
        payloads[ex.split].append(ex.payload)
        yield ex.split, ex.history_len
      training_counts.update(training_items(events, self.split_fn))
    for item, count in sorted(training_counts.items()):
      yield beam.pvalue.TaggedOutput(_TRAINING_COUNTS, (item, count))
    for split, records in payloads.items():
      beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"examples_{split}").inc(len(records))
      name = shard_file(shard, self.num_shards, ".tfrecord")
      yield beam.pvalue.TaggedOutput(_SHARD_FILES, (split, name, records))


_SHARD_FILES = "shard_files"
_TRAINING_COUNTS = "training_counts"


def training_items(events: List[Dict], split_fn) -> List[str]:
  """Items of a user's events that `split_fn` keeps in the train split (no held-out target)."""
  events = time_ordered(events)
  return [e["item"] for e, split in zip(events, split_fn(events)) if split == "train"]


def catalog_csv(rows: List[Dict], tag_ids: Dict[str, int], author_ids: Dict[str, int]) -> str:
  def row(r):
    duration = features.DURATION.to_numpy(r["duration_s"]) if r["duration_s"] else features.PAD_ID
    return (r["index"], r["item_id"], tag_ids.get(r["tag"], features.OOV_ID),
            author_ids.get(r["author"], features.OOV_ID), int(duration), r["count"],
            r["sampling_probability"])
  return data_files.catalog_csv(data_files.catalog_columns(map(row, rows)))


class WriteDeadLetters(beam.PTransform):
  """Dead letters -> <directory>/part-SSSSS-of-NNNNN.jsonl, by a stable hash of (source, line);
  each shard sorted (`dead_letters_jsonl`), every shard written, empty or not. Emits each
  file's fileio.FileResult."""

  def __init__(self, directory: str, num_shards: int, temp_directory: str = None):
    super().__init__()
    self.directory = directory
    self.num_shards = num_shards
    self.temp_directory = temp_directory

  def expand(self, dead_letters):
    n = self.num_shards
    every_shard = dead_letters.pipeline | "EveryShard" >> beam.Create([(i, None) for i in range(n)])
    keyed = dead_letters | "KeyByShard" >> beam.Map(
        lambda r: (stable_shard(f"{r['source']}:{r['line']}", n), r))
    return ((keyed, every_shard) | "Flatten" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "ToFile" >> beam.MapTuple(lambda shard, records: (
                shard_file(shard, n, ".jsonl"),
                dead_letters_jsonl(r for r in records if r is not None).encode("utf-8")))
            .with_output_types(Tuple[str, bytes])
            | "Write" >> sinks.WriteFiles(self.directory, temp_directory=self.temp_directory))


def dead_letters_jsonl(records: Iterable[Dict]) -> str:
  ordered = sorted(records, key=lambda r: (r["source"], r["line"] or 0, r["reason"]))
  return "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered)
