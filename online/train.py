"""Online learning: trains KuaiFormer on log files as they land and exports on a cadence.

  python -m online.train --stream_dir=logs/incoming --state_dir=online_state \
      --init_data_dir=data/built --init_model_dir=runs/demo \
      --item_features=data/raw/items.csv --export_base=models/kuaiformer --export_every_s=60

The first start copies the batch-built --init_data_dir and the trained
--init_model_dir into generation 0 of --state_dir; training always continues
from the newest committed generation, never from scratch. Then, per micro-batch
of landed files (the local stand-in for a Pub/Sub or Kafka topic):

  1. the build job's Beam transforms parse them (ReadRecords, ParseEvents:
     dead letters, positive filter; rows_in = accepted + rejected + filtered);
  2. items never seen get the next ids (old ids never change) and the model's
     item-, tag- and author-indexed tables grow (online/model.py);
  3. every new event becomes a training target with the user's history before
     it: one example per target, or for a model trained every_event one per up
     to 48 targets of a user, as tfkf.train trains it (new_examples); each user's
     newest max_len events are kept for the next batch;
  4. the current model is scored on the batch before it trains on it
     (test-then-train), then model.fit continues it, Adam state included. The
     model stays in memory between micro-batches (online/model.py ResidentModel:
     the item tables keep spare rows for new ids), and so does the stream state;
  5. the new generation is committed atomically with the names of the files it
     consumed (online/state.py): exactly once over files, across kills.

Every --export_every_s, the newest committed generation is exported with
serving.export from the model in memory (checked against it, catalog and index rebuilt) as
the next version under --export_base, which serving.server picks up. With
--servable=user_tower that export is the user tower alone, and the item index
goes to --index_export_base every --index_every_s (without it, another job keeps
the index): the split servables of docs/scaling.md §4, whose tower refresh does
not rebuild the index. Landed
files: regular files matching --pattern whose names do not start with "." or
"_" or end in ".tmp"; producers write elsewhere and rename them in. Files are
consumed in name order.
"""

import argparse
import collections
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from typing import Dict, List

import tfkf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import pandas as pd
import tensorflow as tf

from beam_pipelines import formats
from beam_pipelines import transforms as T
from online.model import ResidentModel, step_count
from online.parse import COUNTS, parse_files
from online.state import HISTORY_KEYS, StateDir, StreamState, consumed_files
from serving.export import existing_versions, export, export_model
from tfkf import data, data_files, evaluate, features
from tfkf.catalog import Catalog
from tfkf.checkpoint import CONFIG_FILE, WEIGHTS, read_config

LINEAGE = os.path.join("assets.extra", "online.json")
EXPORT_STAGING = ".online-staging"
KILL_AT_ENV = "TFKF_ONLINE_KILL_AT"  # "<point>@<generation>": SIGKILL there (crash tests)


def log(**record) -> None:
  print(json.dumps(record, sort_keys=True), flush=True)


def kill_point(point: str, generation: int) -> None:
  """Crash tests: the process SIGKILLs itself at a named point when TFKF_ONLINE_KILL_AT says so."""
  if os.environ.get(KILL_AT_ENV) == f"{point}@{generation}":
    log(event="killing_self", point=point, generation=generation)
    os.kill(os.getpid(), signal.SIGKILL)


def landed_files(stream_dir: str, pattern: str = "*") -> List[str]:
  """Names of the complete files in stream_dir, in consumption (name) order."""
  if not os.path.isdir(stream_dir):
    return []
  return sorted(n for n in os.listdir(stream_dir)
                if fnmatch(n, pattern) and not n.startswith((".", "_")) and not n.endswith(".tmp")
                and os.path.isfile(os.path.join(stream_dir, n)))


# -- generation 0 from a batch build and a trained model -----------------------------
def histories_from_examples(data_dir: str, max_len: int) -> Dict[str, Dict[str, np.ndarray]]:
  """Each user's newest events, from the latest example (history + target) of the build.

  Examples do not store the target event's own features: they are 0 ("unknown").
  Users with a single event have no example and start without a history.
  """
  spec = {features.USER_ID: tf.io.FixedLenFeature([], tf.string),
          features.TARGET_TIME: tf.io.FixedLenFeature([], tf.int64),
          features.TARGET_ITEM: tf.io.FixedLenFeature([], tf.int64)}
  spec.update({features.history_key(k): tf.io.RaggedFeature(tf.int64) for k in HISTORY_KEYS})
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "*", "*.tfrecord")))
  latest = {}
  for batch in tf.data.TFRecordDataset(files).batch(4096).map(lambda s: tf.io.parse_example(s, spec)):
    users = [u.decode() for u in batch[features.USER_ID].numpy()]
    times, targets = batch[features.TARGET_TIME].numpy(), batch[features.TARGET_ITEM].numpy()
    ragged = {k: batch[features.history_key(k)] for k in HISTORY_KEYS}
    values = {k: r.flat_values.numpy() for k, r in ragged.items()}
    splits = ragged["item"].row_splits.numpy()
    for row, user in enumerate(users):
      key = (int(times[row]), int(splits[row + 1] - splits[row]))
      if user not in latest or key > latest[user][0]:
        latest[user] = (key, {k: np.append(values[k][splits[row]:splits[row + 1]],
                                           targets[row] if k == "item" else features.PAD_ID)
                              for k in HISTORY_KEYS})
  return {user: {k: v[-max_len:].astype(np.int64) for k, v in h.items()}
          for user, (_, h) in latest.items()}


def bootstrap(state_dir: StateDir, data_dir: str, model_dir: str) -> None:
  """Commits generation 0: the build's data and the trained model, histories and counts."""
  work = state_dir.work_dir(0)
  config = read_config(model_dir)
  catalog = Catalog.load(data_dir)
  with tf.io.gfile.GFile(os.path.join(data_dir, data_files.CATALOG)) as f:
    counts = pd.read_csv(f, dtype={"item_id": str}, keep_default_na=False)["count"].to_numpy(np.int64)
  vocab = lambda name: data_files.read_vocab(data_dir, name)
  real = catalog.real_items
  state = StreamState(
      items=vocab("item"), tags=vocab("tag"), authors=vocab("author"),
      item_tag=catalog.tag[real], item_author=catalog.author[real],
      item_duration=catalog.duration[real], item_count=counts,
      recent_count=counts.astype(np.float64),
      histories=histories_from_examples(data_dir, config.max_len), ledger=[],
      counts={name: 0 for name in COUNTS + ("examples", "targets", "first_events",
                                            "dead_letters_total")})
  state.write(work)
  shutil.copytree(os.path.join(data_dir, "test"), os.path.join(work, "test"))
  shutil.copytree(os.path.join(model_dir, os.path.dirname(WEIGHTS)),
                  os.path.join(work, os.path.dirname(WEIGHTS)))
  shutil.copy(os.path.join(model_dir, CONFIG_FILE), os.path.join(work, CONFIG_FILE))
  base = data.metadata(data_dir)
  _write_metadata(work, base, state, base["splits"],
                  {"generation": 0, "files": [], "init_data_dir": os.path.abspath(data_dir),
                   "init_model_dir": os.path.abspath(model_dir), "initial_build_counts": base["counts"]})
  state_dir.commit(work, 0)
  log(event="bootstrapped", generation=0, items=len(state.items), users=len(state.histories))


def _write_metadata(out: str, base: dict, state: StreamState, splits: dict, online: dict,
                    **extra) -> None:
  """metadata.json as beam_pipelines.build writes it, counts over the stream, plus "online"."""
  metadata = data_files.metadata(
      base.get("flags", {}), base["event_features"],
      {**state.counts, "users": len(state.histories), "items": len(state.items)},
      {"item": len(state.items), "tag": len(state.tags), "author": len(state.authors)},
      splits, online=online, **extra)
  with open(os.path.join(out, data_files.METADATA), "w") as f:
    f.write(data_files.metadata_json(metadata))


# -- one micro-batch ----------------------------------------------------------------------
def grow_vocabulary(state: StreamState, events: List[Dict], item_features: Dict[str, Dict],
                    count_decay: float) -> List[str]:
  """Appends items never seen (most frequent first, ties by id) and their new tags and
  authors; updates the counts. Returns the new items. Old ids never change."""
  batch_counts = collections.Counter(e["item"] for e in events)
  known = state.item_ids()
  new = [item for item, _ in T.vocab_order((i, c) for i, c in batch_counts.items() if i not in known)]
  durations = {}
  for e in events:
    if e["item"] not in known and e["duration_s"]:
      durations[e["item"]] = max(durations.get(e["item"], 0.0), e["duration_s"])
  tag_ids = T.vocab_ids(state.tags)
  author_ids = T.vocab_ids(state.authors)

  def vocab_id(value, ids, values):
    if not value:
      return features.OOV_ID
    if value not in ids:
      values.append(value)
      ids[value] = len(values) - 1 + features.NUM_RESERVED_IDS
    return ids[value]

  rows = {"tag": [], "author": [], "duration": []}
  for item in new:
    side = item_features.get(item, {})
    rows["tag"].append(vocab_id(side.get("tag"), tag_ids, state.tags))
    rows["author"].append(vocab_id(side.get("author"), author_ids, state.authors))
    duration = side.get("duration_s") or durations.get(item)
    rows["duration"].append(int(features.DURATION.to_numpy(duration)) if duration else features.PAD_ID)
  state.items.extend(new)
  grow = lambda a, extra: np.concatenate([a, np.asarray(extra, a.dtype)])
  state.item_tag = grow(state.item_tag, rows["tag"])
  state.item_author = grow(state.item_author, rows["author"])
  state.item_duration = grow(state.item_duration, rows["duration"])
  state.item_count = grow(state.item_count, [0] * len(new))
  state.recent_count = grow(state.recent_count, [0.0] * len(new)) * count_decay
  ids = state.item_ids()
  for item, c in batch_counts.items():
    row = ids[item] - features.NUM_RESERVED_IDS
    state.item_count[row] += c
    state.recent_count[row] += c
  return new


def new_examples(state: StreamState, events: List[Dict], max_len: int, chunk_len: int = 0,
                 first_event_targets: bool = False):
  """The new events with history as training targets -> serialized examples; updates the
  histories.

  One example per target, or with `chunk_len` (a model trained every_event: the
  layout it trains on) one per up to chunk_len targets of a user, latest first,
  that says how many trailing targets it supervises (features.NUM_TARGETS): the
  older events in its history were targets of earlier batches. Either way each
  new target is supervised once. With `first_event_targets` (and chunk_len: the
  model's KuaiFormerConfig.first_event_targets) a user's first event ever is a
  target too, of the empty history. Returns (train payloads, test payloads: each
  user's newest example with a history, stats).
  """
  if first_event_targets and not chunk_len:
    raise ValueError("first_event_targets needs chunk_len (a model trained every_event)")
  item_index = state.item_ids()
  by_user = collections.defaultdict(list)
  for e in events:
    by_user[e["user"]].append(e)
  train, test = [], []
  stats = {"examples": 0, "targets": 0, "first_events": 0, "history_lens": []}
  empty = {k: np.zeros(0, np.int64) for k in HISTORY_KEYS}
  for user in sorted(by_user):
    user_events = T.time_ordered(by_user[user])
    old = state.histories.get(user, empty)
    new = T.encode_events(user_events, item_index)
    enc = {k: old[k].tolist() + new[k].tolist() for k in HISTORY_KEYS}
    # Unless the model predicts it from the empty history, a user's first event ever is
    # history only.
    targets = [(len(old["item"]) + j, e["time"]) for j, e in enumerate(user_events)
               if len(old["item"]) + j > 0 or first_event_targets]
    stats["first_events"] += len(user_events) - len(targets)
    stats["targets"] += len(targets)
    ends = targets[::-1][::chunk_len][::-1] if chunk_len else targets
    user_examples, previous_end = [], targets[0][0] - 1 if targets else 0
    for p, time_ms in ends:
      start = max(0, p - max_len)
      supervised = p - previous_end if chunk_len else None  # targets previous_end + 1 .. p
      previous_end = p
      user_examples.append(T.example_bytes(user, time_ms, enc, start, p, supervised))
      stats["history_lens"].append(p - start)
    train.extend(user_examples)
    if ends and ends[-1][0] > 0:  # an empty history is no test (the export's check needs one)
      test.append(user_examples[-1])
    state.histories[user] = {k: np.asarray(enc[k][-max_len:], np.int64) for k in HISTORY_KEYS}
  stats["examples"] = len(train)
  return train, test, stats


def _write_records(path: str, payloads) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as w:
    for payload in payloads:
      w.write(payload)


def process_batch(args, state_dir: StateDir, names: List[str], beam_args=(),
                  resident: ResidentModel = None) -> int:
  """Consumes the landed files `names` into the next generation; returns its number.
  `resident` keeps the model and stream state in memory for the next micro-batch."""
  resident = resident or ResidentModel(args.learning_rate, args.spare_item_rows)
  timings, started = {}, time.time()
  clock = [time.perf_counter()]

  def lap(name):
    now = time.perf_counter()
    timings[name] = round(now - clock[0], 3)
    clock[0] = now

  previous, prev_path = state_dir.current()
  number = previous + 1
  state = resident.take_state(previous) or StreamState.read(prev_path)
  work = state_dir.work_dir(number)
  paths = [os.path.join(os.path.abspath(args.stream_dir), n) for n in names]
  sizes = {p: os.path.getsize(p) for p in paths}
  landed = {p: os.path.getmtime(p) for p in paths}
  parsed = parse_files(paths, args.format, os.path.join(work, "parsed"), args.item_features,
                       beam_args, **formats.format_options(args))
  lap("parse_s")
  kill_point("parsed", number)

  for path, c in parsed.counts.items():
    if c["rows_in"] != c["rows_accepted"] + c["rows_rejected"] + c["rows_filtered"]:
      raise RuntimeError(f"accounting broken for {path}: {c}")
  new_items = grow_vocabulary(state, parsed.events, parsed.item_features, args.count_decay)
  config = read_config(prev_path)
  every_event = config.training_targets == "every_event"
  train, test, stats = new_examples(state, parsed.events, config.max_len,
                                    config.num_latest_events if every_event else 0,
                                    config.first_event_targets)  # implies every_event
  if stats["targets"] + stats["first_events"] != len(parsed.events):
    raise RuntimeError(f"{len(parsed.events)} events but {stats} targets + first events")
  for path in paths:
    state.ledger.append({"name": os.path.basename(path), "size": sizes[path],
                         "landed_at": landed[path], "generation": number, **parsed.counts[path]})
  batch_counts = {name: sum(parsed.counts[p][name] for p in paths) for name in COUNTS}
  batch_counts.update(examples=stats["examples"], targets=stats["targets"],
                      first_events=stats["first_events"],
                      dead_letters_total=len(parsed.dead_letters))
  for name, value in batch_counts.items():
    state.counts[name] = state.counts.get(name, 0) + value  # states from before "targets"
  state.write(work)
  _write_records(os.path.join(work, "train", "part-00000-of-00001.tfrecord"), train)
  if test:
    _write_records(os.path.join(work, "test", "part-00000-of-00001.tfrecord"), test)
  else:  # Nothing to hold out in this batch: keep the last one for the export's check.
    shutil.copytree(os.path.join(prev_path, "test"), os.path.join(work, "test"))
  os.makedirs(os.path.join(work, "dead_letter"))
  with open(os.path.join(work, "dead_letter", T.shard_file(0, 1, ".jsonl")), "w") as f:
    f.write(T.dead_letters_jsonl(parsed.dead_letters))
  shutil.rmtree(os.path.join(work, "parsed"))
  lens = stats["history_lens"]
  splits = {"train": {"examples": len(train), "mean_history_len": float(np.mean(lens)) if lens else 0.0,
                      "max_history_len": int(max(lens, default=0))},
            "valid": {"examples": 0, "mean_history_len": 0.0, "max_history_len": 0},
            "test": {"examples": len(test), "mean_history_len": 0.0, "max_history_len": 0}}
  base = data.metadata(prev_path)
  online = {"generation": number, "files": names, "batch_counts": batch_counts,
            "new_items": len(new_items)}
  _write_metadata(work, base, state, splits, online)
  lap("examples_s")

  model = resident.continued(previous, prev_path, state.catalog())
  lap("load_model_s")
  if test:  # Test-then-train: the model that is served now, on events it has not seen.
    online["before_training"] = evaluate.summarize(evaluate.model_ranks_in_chunks(
        model, work, "test", config.max_len, config.event_features,
        max_examples=args.before_training_examples))
  lap("test_s")
  steps = 0
  if train:
    tf.keras.utils.set_random_seed(args.seed + number)
    ds = data.dataset(work, "train", args.batch_size, config.max_len, config.event_features,
                      seed=args.seed + number, repeat=True, trim=every_event)
    steps = max(1, math.ceil(len(train) * args.epochs_per_batch / args.batch_size))
    history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    online["train_loss"] = float(history.history["loss"][-1])
  lap("train_s")
  model.save_weights(os.path.join(work, WEIGHTS))
  shutil.copy(os.path.join(prev_path, CONFIG_FILE), os.path.join(work, CONFIG_FILE))
  lap("save_s")
  kill_point("trained", number)

  online.update(steps=steps, optimizer_step=step_count(model), model_in_place=resident.in_place,
                timings=timings,
                started_at=started, committed_at=time.time())
  _write_metadata(work, base, state, splits, online,
                  item_table_rows=model.side_features.num_items)
  kill_point("staged", number)
  state_dir.commit(work, number, before_pointer=lambda: kill_point("renamed", number))
  resident.committed(number, state)
  lap("commit_s")
  log(event="committed", generation=number, files=names, new_items=len(new_items),
      examples=len(train), steps=steps, optimizer_step=online["optimizer_step"],
      before_training={k: v for k, v in online.get("before_training", {}).items()
                       if k in ("hr@10", "hr@100", "examples")}, timings=timings)
  kill_point("committed", number)
  return number


# -- exports ---------------------------------------------------------------------------
def last_export(export_base: str):
  """Lineage (assets.extra/online.json) of the newest online export, or None."""
  for version in reversed(existing_versions(export_base)):
    path = os.path.join(export_base, str(version), LINEAGE)
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
  return None


def export_generation(args, state_dir: StateDir, since_generation: int,
                      servable: str = None, export_base: str = None,
                      resident: ResidentModel = None) -> dict:
  """Exports the committed generation as the next version of `servable` (default
  --servable) under `export_base` (default --export_base); its lineage names the
  files consumed since `since_generation` (the last exported one). The model comes
  from `resident` when it holds that generation, else from the generation's files."""
  servable, export_base = servable or args.servable, export_base or args.export_base
  number, gen = state_dir.current()
  staging = os.path.join(export_base, EXPORT_STAGING)
  shutil.rmtree(staging, ignore_errors=True)  # Left by a killed export: never published.
  version = max(existing_versions(export_base), default=0) + 1
  started = time.perf_counter()
  options = dict(index=args.index, top_k=args.top_k, version=version,
                 verify_examples=args.verify_examples, min_recall=args.min_recall, servable=servable)
  if args.export_in_child:
    result = _export_in_child(gen, staging, **options)
  elif resident is not None and resident.generation == number:
    result = export_model(resident.model, resident.catalog, gen, staging, **options)
  else:
    result = export(gen, gen, staging, **options)
  state = StreamState.read(gen)
  lineage = {"version": version, "generation": number, "exported_at": time.time(),
             "batch": data.metadata(gen)["online"],  # the newest generation's record
             "export_s": round(time.perf_counter() - started, 3),
             "new_files": [e["name"] for e in state.ledger if e["generation"] > since_generation],
             "files_consumed": len(state.ledger), "counts": state.counts,
             "items": len(state.items), "verification": result["verification"]}
  with open(os.path.join(result["path"], LINEAGE), "w") as f:
    json.dump(lineage, f, indent=1, sort_keys=True)
  # Published in one rename: the server never sees a version without its lineage.
  os.rename(result["path"], os.path.join(export_base, str(version)))
  shutil.rmtree(staging, ignore_errors=True)
  log(event="exported", servable=servable, version=version, generation=number,
      new_files=lineage["new_files"], export_s=lineage["export_s"])
  kill_point("exported", number)
  return lineage


def _export_in_child(gen: str, export_base: str, **options) -> dict:
  """serving.export's result, from `python -m serving.export` in a process of its own: its
  memory goes back when it exits (at 10M items a tower export reloads a ~3 GB model, and
  the item index's export went past 19.8 GB)."""
  flags = [f"--{name}={value}" for name, value in options.items()]
  done = subprocess.run([sys.executable, "-m", "serving.export", f"--model_dir={gen}",
                         f"--data_dir={gen}", f"--export_base={export_base}", *flags],
                        stdout=subprocess.PIPE, check=True, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def _process_batch_in_child(args, state_dir: StateDir, names: List[str], beam_args) -> int:
  """process_batch in a process of its own, whose memory goes back when it exits: at 10M
  items this process kept ~8.8 GB of each micro-batch and the second one ran out."""
  child = multiprocessing.get_context("spawn").Process(
      target=process_batch, args=(args, state_dir, names, beam_args))
  child.start()
  child.join()
  if child.exitcode != 0:
    raise RuntimeError(f"micro-batch {names} failed in its process (exit code {child.exitcode})")
  return state_dir.current()[0]


# -- the loop -------------------------------------------------------------------------
def run(args, beam_args=()) -> dict:
  state_dir = StateDir(args.state_dir)
  removed = state_dir.recover()
  if removed:
    log(event="recovered", discarded=removed)
  if state_dir.current() is None:
    if not (args.init_data_dir and args.init_model_dir):
      raise SystemExit("online.train: an empty --state_dir needs --init_data_dir and --init_model_dir")
    bootstrap(state_dir, args.init_data_dir, args.init_model_dir)
  exported = last_export(args.export_base) if args.export_base else None
  exported_generation = exported["generation"] if exported else -1
  exported_at = exported["exported_at"] if exported else -math.inf
  indexed = last_export(args.index_export_base) if args.index_export_base else None
  indexed_generation = indexed["generation"] if indexed else -1
  indexed_at = indexed["exported_at"] if indexed else -math.inf
  resident = ResidentModel(args.learning_rate, args.spare_item_rows)
  if not args.batch_in_child:  # held from the start: exports of it need no second copy
    resident.load(*state_dir.current())
  batches, idle_since = 0, time.monotonic()
  enough = lambda: args.max_batches is not None and batches >= args.max_batches
  while True:
    number, gen = state_dir.current()
    consumed = consumed_files(gen)
    pending = [n for n in landed_files(args.stream_dir, args.pattern) if n not in consumed]
    if pending and not enough():
      batch = pending[:args.max_files_per_batch]
      if args.batch_in_child:
        number = _process_batch_in_child(args, state_dir, batch, beam_args)
      else:
        number = process_batch(args, state_dir, batch, beam_args, resident)
      batches += 1
      idle_since = time.monotonic()
    idle = (args.exit_when_idle_s is not None and not pending
            and time.monotonic() - idle_since >= args.exit_when_idle_s)
    stopping = enough() or idle
    due = time.time() - exported_at >= args.export_every_s
    if args.export_base and number > exported_generation and (due or stopping):
      lineage = export_generation(args, state_dir, exported_generation, resident=resident)
      exported_generation, exported_at = lineage["generation"], lineage["exported_at"]
    index_due = time.time() - indexed_at >= args.index_every_s
    if args.index_export_base and number > indexed_generation and (index_due or stopping):
      lineage = export_generation(args, state_dir, indexed_generation, "item_index",
                                  args.index_export_base, resident)
      indexed_generation, indexed_at = lineage["generation"], lineage["exported_at"]
    if stopping:
      return {"generation": number, "batches": batches, "exported_generation": exported_generation}
    if not pending:
      time.sleep(args.poll_interval_s)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--stream_dir", required=True, help="directory new log files land in")
  p.add_argument("--state_dir", required=True, help="committed generations (model, vocab, histories)")
  p.add_argument("--init_data_dir", help="beam_pipelines.build --output_dir (first start only)")
  p.add_argument("--init_model_dir", help="tfkf.train --model_dir (first start only)")
  p.add_argument("--pattern", default="*", help="only landed files whose names match")
  formats.add_format_flags(p)  # as beam_pipelines.build; --item_features is re-read every batch
  p.add_argument("--max_files_per_batch", type=int, default=8)
  p.add_argument("--epochs_per_batch", type=float, default=1.0,
                 help="passes over each micro-batch's examples")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--spare_item_rows", type=int, default=None,
                 help="rows the item tables keep for new ids, so the model stays in memory "
                      "between micro-batches (default: 1%% of the catalog, at least 1024); "
                      "when they run out it is built again with as many to spare")
  p.add_argument("--before_training_examples", type=int, default=None,
                 help="test-then-train on at most this many of the batch's users (default all): "
                      "full-catalog scoring costs users x items, on the way to the export")
  p.add_argument("--count_decay", type=float, default=0.5,
                 help="per micro-batch decay of the item counts behind the logQ probabilities")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--export_base", default=None, help="versions go to <export_base>/<N>/")
  p.add_argument("--export_every_s", type=float, default=60.0,
                 help="least seconds between exports (0: after every micro-batch)")
  p.add_argument("--servable", choices=["retriever", "user_tower"], default="retriever",
                 help="what --export_base gets (serving.export --servable)")
  p.add_argument("--index_export_base", default=None,
                 help="--servable=user_tower: item index versions go to <index_export_base>/<N>/ "
                      "(default: none, another job keeps the index)")
  p.add_argument("--index_every_s", type=float, default=600.0,
                 help="least seconds between item index exports")
  p.add_argument("--batch_in_child", action="store_true",
                 help="run each micro-batch (parse, examples, test-then-train, commit) in a "
                      "process of its own: for catalogs of millions of items")
  p.add_argument("--export_in_child", action="store_true",
                 help="run each export in a process of its own (python -m serving.export), "
                      "whose memory goes back to the machine: for catalogs of millions of items")
  p.add_argument("--index", choices=["scann", "brute_force"], default="scann")
  p.add_argument("--top_k", type=int, default=100)
  p.add_argument("--verify_examples", type=int, default=256)
  p.add_argument("--min_recall", type=float, default=0.95)
  p.add_argument("--poll_interval_s", type=float, default=1.0)
  p.add_argument("--max_batches", type=int, default=None, help="stop after this many micro-batches")
  p.add_argument("--exit_when_idle_s", type=float, default=None,
                 help="stop after this long with no new file (0: once everything landed is consumed)")
  return p.parse_known_args(argv)


def main(argv=None):
  args, beam_args = parse_args(argv)
  if args.format in ("csv", "jsonl", "parquet") and not args.columns:
    raise SystemExit(f"online.train: --format={args.format} needs --columns")
  if args.index_export_base and args.servable != "user_tower":
    raise SystemExit("online.train: --index_export_base is for --servable=user_tower "
                     "(a retriever has its own index)")
  log(event="done", **run(args, beam_args))


if __name__ == "__main__":
  main()
