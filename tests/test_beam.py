"""The build job: transforms in TestPipeline, and the whole job on a corrupted log."""

import collections
import csv
import glob
import hashlib
import json
import os
import shutil

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
import pytest
import tensorflow as tf

from beam_pipelines import build, sinks, synthetic
from beam_pipelines import transforms as T
from tfkf import features

HEADER = tuple(synthetic.LOG_COLUMNS)


def _line(values):
  return ",".join(str(v) for v in values).encode()


GOOD = (1, 10, 1000, 5000, 10000, 1, 0, 0, 0, 0, 0, 1)
NOT_CLICKED = (1, 11, 2000, 100, 10000, 0, 0, 0, 0, 0, 0, 0)
# Each corruption and the reason its dead letter must carry.
CORRUPTIONS = {
    b"1,12,3000,100": "expected 12 fields, got 4",
    _line((1, 12, 3000, 100, 10000, 1, 0, 0, 0, 0, 0, 1, 99)): "expected 12 fields, got 13",
    _line((1, 12, "yesterday", 100, 10000, 1, 0, 0, 0, 0, 0, 1)): "non-numeric 'time_ms'",
    _line((1, 12, -5, 100, 10000, 1, 0, 0, 0, 0, 0, 1)): "out-of-range 'time_ms'",
    _line((1, 12, 3000, -100, 10000, 1, 0, 0, 0, 0, 0, 1)): "negative 'play_time_ms'",
    _line((1, 12, 3000, 100, -1, 1, 0, 0, 0, 0, 0, 1)): "negative 'duration_ms'",
    _line(("", 12, 3000, 100, 10000, 1, 0, 0, 0, 0, 0, 1)): "empty 'user_id'",
    _line((1, " ", 3000, 100, 10000, 1, 0, 0, 0, 0, 0, 1)): "empty 'video_id'",
    b"1,12,3000,100,10000,1,0,0,0,0,0,\xff\xfe": "undecodable bytes (not UTF-8)",
    b"": "empty line",
}


def test_parse_events_routes_every_row_to_exactly_one_output():
  rows = [("log.csv", 2, _line(GOOD), HEADER), ("log.csv", 3, _line(NOT_CLICKED), HEADER)]
  rows += [("log.csv", 4 + i, raw, HEADER) for i, raw in enumerate(CORRUPTIONS)]
  p = BeamTestPipeline()
  out = p | beam.Create(rows) | T.ParseEvents("kuairand")
  assert_that(out.events | beam.Map(lambda e: (e["user"], e["item"], e["time"], e["order"])),
              equal_to([("1", "10", 1000, ("log.csv", 2))]), label="events")
  assert_that(out[T.FILTERED], equal_to([("log.csv", 3)]), label="filtered")
  assert_that(out[T.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"].split(":")[0])),
              equal_to([(4 + i, reason) for i, reason in enumerate(CORRUPTIONS.values())]),
              label="dead letters")
  p.run().wait_until_finish()


def test_vocabulary_orders_by_count_then_value_and_drops_rare_values():
  with BeamTestPipeline() as p:
    vocab = p | beam.Create(list("abbcccdd")) | T.BuildVocabulary(min_count=2)
    assert_that(vocab, equal_to([[("c", 3), ("b", 2), ("d", 2)]]))


def test_leave_one_out_examples_never_use_later_events():
  events = [{"user": "u", "item": str(i), "time": 10 * i, "order": ("f", i),
             **{raw: 0.0 for raw in features.EVENT_RAW_INPUTS.values()}} for i in range(6)]
  index = {str(i): i + 2 for i in range(6)}
  out = list(T.user_examples(("u", events[::-1]), index, max_len=3, stride=1,
                             max_examples_per_user=100))
  splits = {}
  for split, _, position, _, payload in out:
    ex = tf.train.Example.FromString(payload).features.feature
    history = list(ex[features.HISTORY_ITEM].int64_list.value)
    assert history == [i + 2 for i in range(max(0, position - 3), position)]
    assert ex[features.TARGET_ITEM].int64_list.value[0] == position + 2
    splits.setdefault(split, []).append(position)
  assert splits == {"train": [1, 2, 3], "valid": [4], "test": [5]}


@pytest.fixture(scope="module")
def corrupted_log(tmp_path_factory):
  d = tmp_path_factory.mktemp("corrupted")
  log = d / "log.csv"
  synthetic.generate(synthetic.parse_args(["--users=60", "--items=200", "--seed=5",
                                           "--max_events=30", f"--output={log}"]))
  lines = log.read_bytes().split(b"\n")
  for i, raw in enumerate(CORRUPTIONS):  # replace rows 5, 15, 25, ... with corruptions
    lines[5 + 10 * i] = raw
  log.write_bytes(b"\n".join(lines))
  return d, lines


def _build(d, out, *runner_flags):
  """(metadata.json, the job's Beam Metrics counters)."""
  result = build.run(["--runner=DirectRunner", *runner_flags, f"--input={d / 'log.csv'}",
             "--format=kuairand", f"--item_features={d / 'items.csv'}", f"--output_dir={out}",
             "--num_shards=3"])
  counters = collections.Counter()
  for c in result.metrics().query(MetricsFilter().with_namespace(T.METRICS_NAMESPACE))["counters"]:
    counters[c.key.metric.name] += c.committed
  with open(os.path.join(out, "metadata.json")) as f:
    return json.load(f), counters


def _digest(out):
  files = sorted(p for p in glob.glob(f"{out}/**/*", recursive=True) if os.path.isfile(p))
  return {os.path.relpath(p, out): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}


def test_build_accounts_for_every_row_and_is_byte_identical(corrupted_log, tmp_path):
  d, lines = corrupted_log
  meta, counters = _build(d, tmp_path / "a")
  c = meta["counts"]
  # The same accounting as Beam Metrics counters, which a runner's UI shows.
  assert counters == {**c, **{f"examples_{s}": meta["splits"][s]["examples"] for s in T.SPLITS}}
  data_rows = len(lines) - 1 - (lines[-1] == b"")  # header and the final newline are no rows
  assert c["rows_in"] == data_rows
  assert c["rows_in"] == c["rows_accepted"] + c["rows_rejected"] + c["rows_filtered"]
  dead = []
  for path in sorted(glob.glob(str(tmp_path / "a" / "dead_letter" / "part-*-of-00003.jsonl"))):
    with open(path) as f:
      shard = [json.loads(l) for l in f]
    assert shard == sorted(shard, key=lambda r: (r["source"], r["line"], r["reason"]))
    dead += shard
  dead.sort(key=lambda r: r["line"])
  assert [(r["line"], r["reason"].split(":")[0]) for r in dead] == [
      (6 + 10 * i, reason) for i, reason in enumerate(CORRUPTIONS.values())]
  # Every valid positive row is in the output, intact: each user's test example
  # (history + target) is exactly that user's valid positive events in time order.
  dead_lines = {r["line"] for r in dead}
  header = lines[0].decode().rstrip("\r").split(",")
  expected = {}
  for number, raw in enumerate(lines[1:], start=2):
    if number in dead_lines or not raw:
      continue
    row = dict(zip(header, raw.decode().rstrip("\r").split(",")))
    if row["is_click"] == "1" or row["long_view"] == "1":
      expected.setdefault(row["user_id"], []).append((int(row["time_ms"]), number, row["video_id"]))
  assert c["rows_accepted"] == sum(map(len, expected.values()))
  with open(tmp_path / "a" / "vocab" / "item.txt") as f:
    index = {item.rstrip("\n"): i + features.NUM_RESERVED_IDS for i, item in enumerate(f)}
  seen = {}
  for path in glob.glob(str(tmp_path / "a" / "test" / "*.tfrecord")):
    for record in tf.data.TFRecordDataset(path):
      ex = tf.train.Example.FromString(record.numpy()).features.feature
      user = ex[features.USER_ID].bytes_list.value[0].decode()
      seen[user] = (list(ex[features.HISTORY_ITEM].int64_list.value)
                    + list(ex[features.TARGET_ITEM].int64_list.value))
  assert seen == {u: [index[item] for _, _, item in sorted(events)] for u, events in expected.items()}
  assert meta["splits"]["test"]["examples"] == meta["splits"]["valid"]["examples"] == c["users"]
  # catalog.csv counts (logQ's sampling probability) hold no valid or test target.
  training = collections.Counter(item for events in expected.values()
                                 for _, _, item in sorted(events)[:-2 if len(events) >= 3 else None])
  with open(tmp_path / "a" / "catalog.csv") as f:
    catalog = list(csv.DictReader(f))
  assert {r["item_id"]: int(r["count"]) for r in catalog} == {
      item: training[item] for item in index}
  assert sum(float(r["sampling_probability"]) for r in catalog) == pytest.approx(1.0)
  first = _digest(tmp_path / "a")
  shutil.rmtree(tmp_path / "a")
  # Same input and flags, another execution mode: 2 worker processes.
  _build(d, tmp_path / "a", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
  second = _digest(tmp_path / "a")
  assert first == second
  assert len([f for f in first if f.endswith(".tfrecord")]) == 9
  assert len([f for f in first if f.startswith("dead_letter/")]) == 3
  assert not os.path.exists(tmp_path / "a" / build.TEMP_DIR)  # no temporary file left behind


def test_remote_runners_stage_the_package_unless_the_job_already_ships_code():
  setup = [f"--setup_file={build.PYPROJECT}"]
  assert os.path.exists(build.PYPROJECT)
  for runner in ("DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"):
    assert build.staging_flags([f"--runner={runner}"]) == setup
  for argv in ([], ["--runner=DirectRunner"], ["--runner=BundleBasedDirectRunner"],
               ["--runner=DataflowRunner", "--setup_file=/src/setup.py"],
               ["--runner=FlinkRunner", "--extra_package=dist/tfkf-0.1.0.tar.gz"],
               ["--runner=DataflowRunner", "--sdk_container_image=gcr.io/p/tfkf:1"]):
    assert build.staging_flags(argv) == [], argv


class _CrashesMidFileOnce(sinks.TFRecordFileSink):
  """Writes a file's first record, then fails its bundle, the first time only."""
  marker = None  # a path: exists once the crash happened

  def write(self, element):
    if os.path.exists(self.marker):
      return super().write(element)
    super().write((element[0], element[1][:1]))
    open(self.marker, "w").close()
    raise RuntimeError("worker lost mid-file")


def test_a_retried_write_bundle_leaves_no_duplicate_or_partial_file(tmp_path):
  """The bundle-based DirectRunner retries a failed bundle, as a distributed runner would."""
  _CrashesMidFileOnce.marker = str(tmp_path / "crashed")
  files = {f"part-{i:05d}-of-00003.tfrecord": [f"{i}:{r}".encode() for r in range(3)]
           for i in range(3)}
  temp = str(tmp_path / "temp")
  with beam.Pipeline(runner="BundleBasedDirectRunner") as p:
    written = (p | beam.Create(sorted(files.items()))
               | sinks.WriteFiles(str(tmp_path / "out"), _CrashesMidFileOnce, temp))
    _ = written | sinks.DeleteTemporaries(temp)
  assert os.path.exists(_CrashesMidFileOnce.marker)  # a bundle did fail part-way
  assert sorted(os.listdir(tmp_path / "out")) == sorted(files)
  for name, records in files.items():
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "out" / name))] == records
  assert not os.path.exists(temp)  # the failed attempt's partial file went with it


def test_tfrecord_frame_is_what_tensorflow_writes(tmp_path):
  path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for record in (b"", b"a", b"x" * 1000):
      w.write(record)
  with open(path, "rb") as f:
    assert f.read() == b"".join(sinks.tfrecord_frame(r) for r in (b"", b"a", b"x" * 1000))


# -- properties ----------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

ROW_KINDS = {"accepted": _line(GOOD), "filtered": _line(NOT_CLICKED), **{
    f"rejected:{i}": raw for i, raw in enumerate(CORRUPTIONS)}}


@settings(max_examples=8, deadline=None)
@given(st.lists(st.sampled_from(sorted(ROW_KINDS)), min_size=1, max_size=40))
def test_accounting_identity_holds_for_any_mix_of_rows(kinds):
  rows = [("log.csv", i + 2, ROW_KINDS[k], HEADER) for i, k in enumerate(kinds)]
  expected = {"accepted": kinds.count("accepted"), "filtered": kinds.count("filtered")}
  expected["rejected"] = len(kinds) - expected["accepted"] - expected["filtered"]
  with BeamTestPipeline() as p:
    out = p | beam.Create(rows) | T.ParseEvents("kuairand")
    counts = [(name, pc | f"Count{name}" >> beam.combiners.Count.Globally())
              for name, pc in (("accepted", out.events), ("rejected", out[T.DEAD_LETTER]),
                               ("filtered", out[T.FILTERED]))]
    merged = [pc | f"Tag{name}" >> beam.Map(lambda n, name=name: (name, n)) for name, pc in counts]
    assert_that(merged | beam.Flatten(), equal_to(sorted(expected.items())))


events_strategy = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 6)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.one_of(st.none(), st.integers(0, 20)), st.integers(1, 6),
       st.integers(1, 4))
def test_no_valid_or_test_target_is_a_training_target_and_histories_are_earlier(
    raw_events, split_time, max_len, holdout):
  events = [{"user": "u", "item": str(item), "time": t, "order": ("f", i),
             **{r: 0.0 for r in features.EVENT_RAW_INPUTS.values()}}
            for i, (t, item) in enumerate(raw_events)]
  split_fn = T.LastEvents(holdout) if split_time is None else T.TimeSplit(split_time)
  index = {str(i): i + 2 for i in range(7)}
  ordered = sorted(events, key=lambda e: (e["time"], e["order"]))
  targets = {}
  for split, _, position, _, payload in T.user_examples(("u", events), index, max_len, 1, 10**6,
                                                     split_fn):
    ex = tf.train.Example.FromString(payload).features.feature
    history = list(ex[features.HISTORY_ITEM].int64_list.value)
    assert history == [index[e["item"]] for e in ordered[max(0, position - max_len):position]]
    assert ex[features.TARGET_TIME].int64_list.value[0] == ordered[position]["time"]
    targets.setdefault(split, set()).add(position)
    if split_time is not None:
      assert (ordered[position]["time"] >= split_time) == (split == "test")
  if split_time is None and len(events) > 2 * holdout:
    last = len(events) - 1
    assert targets["test"] == set(range(last - holdout + 1, last + 1))
    assert targets["valid"] == set(range(last - 2 * holdout + 1, last - holdout + 1))
  assert not targets.get("train", set()) & (targets.get("valid", set()) | targets.get("test", set()))


def _events(user, n):
  return [{"user": user, "item": str(i % 5), "time": 10 * i, "order": ("f", i),
           "duration_s": None, **{r: 0.0 for r in features.EVENT_RAW_INPUTS.values()}}
          for i in range(n)]


def test_stride_and_cap_keep_the_latest_training_targets():
  index = {str(i): i + 2 for i in range(5)}
  out = list(T.user_examples(("u", _events("u", 12)), index, max_len=4, stride=3,
                             max_examples_per_user=2))
  # Training targets are positions 1..9; latest first every 3rd: 9, 6, 3 -> capped to 9, 6.
  assert [(e.split, e.position) for e in out] == [("train", 6), ("train", 9), ("valid", 10),
                                                   ("test", 11)]
  assert [e.history_len for e in out] == [4, 4, 4, 4]


def test_write_example_shards_writes_every_split_of_every_shard(tmp_path):
  events = _events("a", 5) + _events("b", 2) + _events("c", 4)
  with BeamTestPipeline() as p:
    index = p | "Index" >> beam.Create([{str(i): i + 2 for i in range(5)}])
    lens = (p | beam.Create(events)
            | T.WriteExampleShards(str(tmp_path), 2, index, max_len=3, stride=1,
                                   max_examples_per_user=100))["history_lens"]
    # a: train 1, 2, valid 3, test 4; b: train 1 (fewer than 3 events); c: train 1, valid 2, test 3
    assert_that(lens, equal_to([("train", 1), ("train", 2), ("valid", 3), ("test", 3),
                                ("train", 1), ("train", 1), ("valid", 2), ("test", 3)]))
  files = sorted(os.path.relpath(f, tmp_path) for f in glob.glob(f"{tmp_path}/*/*.tfrecord"))
  written = {f.split("/")[1] for f in files}
  assert len(files) == 3 * len(written)  # every shard that holds users has all three splits
  targets = {split: sum(1 for f in files if f.startswith(split)
                        for _ in tf.data.TFRecordDataset(str(tmp_path / f)))
             for split in T.SPLITS}
  assert targets == {"train": 4, "valid": 2, "test": 2}


def test_chunk_layout_covers_every_training_target_once_and_no_held_out_one():
  index = {str(i): i + 2 for i in range(4)}  # item "4" is out of vocabulary
  events = _events("u", 43)
  chunk, max_len = 6, 10
  out = list(T.user_examples(("u", events), index, max_len, chunk, 10**6, chunks=True))
  covered = []
  for e in out:
    if e.split == "train":
      # every_event training: the targets after each of the latest min(history, chunk) events
      covered += range(e.position - min(e.history_len, chunk) + 1, e.position + 1)
  assert sorted(covered) == list(range(1, 41))  # positions 41, 42: valid, test
  earliest = min((e for e in out if e.split == "train"), key=lambda e: e.position)
  # It holds the user's whole history (from position 0), no longer than chunk: a model with
  # first_event_targets (a cut before a whole history's first event) covers position 0 there.
  assert earliest.position == earliest.history_len <= chunk < max_len
  assert [(e.split, e.position) for e in out if e.split != "train"] == [("valid", 41), ("test", 42)]
  oov_ends = [e for e in out if e.split == "train" and events[e.position]["item"] == "4"]
  assert oov_ends, "a chunk whose own target is out of vocabulary is kept"
  assert sum(e.split == "train" for e in out) == -(-40 // chunk)  # ceil: 7 examples, not 40
