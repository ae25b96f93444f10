"""Online learning: batches land, the trainer continues the model, the server swaps versions."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import cli
from beam_pipelines import build, synthetic_stream
from serving.client import rest_predict, wait_until_available
from tfkf.config import PRESETS

K = 10
MODEL = "kuaiformer"
# Batch 1 is trained and served as landed; the trainer is killed in the middle of the last
# one and restarted. (3 batches ran the normal case twice: ~30 s more of `make test`.)
BATCHES = 2
CORRUPT_ROWS = 2
ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
# make test runs pytest-xdist with --dist loadfile: one worker runs this whole module, so
# its heavy fixtures run once. (--dist loadgroup with xdist_group marks split this module
# over both workers here, each running the 2-minute online simulation.)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
  """serving.server polling an empty export base; started first so that it loads
  TensorFlow while the first model trains."""
  d = tmp_path_factory.mktemp("serving")
  base, rest = d / "models", cli.free_port()
  os.makedirs(base)
  process = cli.start("serving.server", f"--model_name={MODEL}", f"--model_base_path={base}",
                      f"--rest_api_port={rest}", "--port=0", "--file_system_poll_wait_seconds=0.2",
                      log_path=str(d / "server.log"))
  yield {"base": base, "rest": rest}
  process.terminate()
  process.wait(timeout=30)


@pytest.fixture(scope="session")
def stream(tmp_path_factory):
  """Synthetic stream files, and the first model built and trained on the initial log
  (in-process: the CLIs are the same functions): sequence-level training (every_event on
  the chunk layout), which the online trainer then continues the same way."""
  from tfkf import train
  d = tmp_path_factory.mktemp("online")
  files = synthetic_stream.generate(synthetic_stream.parse_args([
      f"--output_dir={d / 'stream'}", "--users=200", "--items=300", "--tags=12",
      f"--batches={BATCHES}", "--new_items_per_batch=15", f"--corrupt_rows={CORRUPT_ROWS}",
      "--seed=5"]))
  build.run(["--runner=DirectRunner", f"--input={files['initial']}", "--format=kuairand",
             f"--item_features={files['items']}", f"--output_dir={d / 'data'}", "--max_len=64",
             "--num_shards=1", "--layout=chunks", f"--chunk_len={PRESETS['small'].num_latest_events}"])
  train.train(train.parse_args([
      f"--data_dir={d / 'data'}", f"--model_dir={d / 'run'}", "--preset=small", "--epochs=1",
      "--steps_per_epoch=50", "--batch_size=64", "--targets_per_batch=512", "--validation_steps=1",
      "--verbose=2", '--config_overrides={"training_targets": "every_event"}']))
  return {**files, "dir": d, "data": str(d / "data"), "run": str(d / "run")}


def online_args(stream, incoming, state_dir, *extra):
  return ["-m", "online.train", f"--stream_dir={incoming}",
          f"--state_dir={state_dir}", f"--init_data_dir={stream['data']}",
          f"--init_model_dir={stream['run']}", f"--item_features={stream['items']}",
          "--max_files_per_batch=1", "--epochs_per_batch=1", "--batch_size=64",
          "--poll_interval_s=0.2", *extra]


def land(path, stream_dir):
  """Moves a batch file in the way producers must: written aside, renamed into place."""
  os.makedirs(stream_dir, exist_ok=True)
  tmp = os.path.join(stream_dir, "." + os.path.basename(path))
  shutil.copy(path, tmp)
  os.rename(tmp, os.path.join(stream_dir, os.path.basename(path)))


def status(port):
  import urllib.request
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=5) as r:
    return {int(s["version"]): s["state"] for s in json.load(r)["model_version_status"]}


def wait_for_version(port, version, trainer, log, timeout_s=180):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert trainer.poll() in (None, 0), f"the online trainer died:\n{log.read_text()[-3000:]}"
    if status(port).get(version) == "AVAILABLE":
      return
    time.sleep(0.2)
  raise TimeoutError(f"version {version} never became AVAILABLE")


def positives(*paths):
  """Positive events of KuaiRand CSVs, as the build keeps them, time-ordered per user."""
  log = pd.concat([pd.read_csv(p, dtype={"user_id": str, "video_id": str}) for p in paths])
  log = log[(log.is_click == 1) | (log.long_view == 1)]
  return log.sort_values(["user_id", "time_ms"], kind="stable")


# The trainer is SIGKILLed (TFKF_ONLINE_KILL_AT) in the middle of the last batch, after
# training and after its generation was renamed into place but before CURRENT points at
# it, then restarted: the batch must be discarded and redone.
KILL_AT = f"renamed@{BATCHES}"


@pytest.fixture(scope="session")
def online(server, stream):
  """serving.server and the online trainer; batches land one at a time, each waited for,
  and the trainer is killed in the middle of the last batch and restarted.

  Records the top K served to the hit's watchers before and after each refresh, and
  every failed call of a client that calls the server throughout.
  """
  d = stream["dir"]
  state, incoming, base, rest = d / "state", d / "incoming", server["base"], server["rest"]
  logs = []

  def start_trainer(kill_at, *extra):
    logs.append(d / f"trainer-{len(logs)}.log")
    env = {**cli.env(), **({"TFKF_ONLINE_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.Popen(
        [sys.executable, *online_args(stream, incoming, state, f"--export_base={base}",
                                      "--export_every_s=0", "--index=brute_force", f"--top_k={K}",
                                      *extra)],
        cwd=cli.ROOT, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT)

  truth = stream["truth"]
  history = positives(stream["initial"], *stream["batches"]).groupby("user_id").video_id.agg(list)
  # The hit's watchers, with their history up to the moment they watched it.
  before_hit = {u: h[:h.index(truth["hit_item"])][-64:] for u, h in history.items()
                if truth["hit_item"] in h}
  stop, failures, calls = threading.Event(), [], [0]

  def client():  # A user of the service: any failed call during swaps and restarts counts.
    while not stop.is_set():
      try:
        rest_predict("127.0.0.1", rest, MODEL, [history.iloc[calls[0] % len(history)][-20:]])
        calls[0] += 1
      except Exception as e:
        failures.append(f"{type(e).__name__}: {e}")
      time.sleep(0.1)

  served, versions, exits = {}, [], []
  trainer = start_trainer(KILL_AT)
  try:
    wait_until_available("127.0.0.1", rest, MODEL, timeout_s=180)
    load = threading.Thread(target=client)
    load.start()
    for batch in range(BATCHES + 1):
      version = batch + 1
      if batch == BATCHES:  # The trainer was killed in the middle of this batch: restart it.
        exits.append(trainer.wait(timeout=180))
        assert (state / "generations" / f"gen-{batch:08d}").exists(), "renamed, not committed"
        assert (state / "CURRENT").read_text().strip() == f"gen-{batch - 1:08d}"
        trainer = start_trainer(None, "--exit_when_idle_s=0")
      wait_for_version(rest, version, trainer, logs[-1])
      versions.append(max(status(rest)))
      served[version] = rest_predict("127.0.0.1", rest, MODEL,
                                     list(before_hit.values()))["predictions"]
      if batch < BATCHES:
        land(stream["batches"][batch], incoming)
    exits.append(trainer.wait(timeout=120))
  finally:
    stop.set()
    if trainer.poll() is None:
      trainer.kill()
  return {"state": state, "base": base, "served": served, "versions": versions,
          "hit_watchers": len(before_hit), "failures": failures, "calls": calls[0],
          "exits": exits, "logs": [p.read_text() for p in logs]}


def _lineage(base, version):
  with open(base / str(version) / "assets.extra" / "online.json") as f:
    return json.load(f)


def test_each_batch_is_served_as_a_new_version_without_failed_requests(stream, online):
  assert online["versions"] == list(range(1, BATCHES + 2))
  names = [os.path.basename(p) for p in stream["batches"]]
  for version in range(1, BATCHES + 2):
    lineage = _lineage(online["base"], version)
    assert lineage["generation"] == version - 1
    assert lineage["new_files"] == ([] if version == 1 else [names[version - 2]])
  assert online["calls"] > 20 and not online["failures"], online["failures"][:5]


def test_a_new_item_that_became_popular_is_retrievable_after_the_refresh(stream, online):
  hit = stream["truth"]["hit_item"]
  with open(os.path.join(stream["data"], "vocab", "item.txt")) as f:
    assert hit not in f.read().split(), "the hit is new in the last batch"
  found = lambda version: sum(hit in row["item_ids"] for row in online["served"][version])
  before, after = found(BATCHES), found(BATCHES + 1)
  watchers = online["hit_watchers"]
  print(f"hit watchers (history up to the hit) with it in their top {K}: before the refresh "
        f"{before}, after {after} of {watchers}")
  assert watchers >= 20
  assert before == 0, "an unknown item cannot be retrieved"
  assert after >= 0.5 * watchers


def _hit_rate(export_dir, cases):
  signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
  hits = 0
  for start in range(0, len(cases), 64):
    chunk = cases[start:start + 64]
    width = max(len(h) for h, _ in chunk) + 1
    ids = [[""] * (width - len(h)) + h for h, _ in chunk]
    top = signature(item_ids=tf.constant(ids))["item_ids"].numpy()
    hits += sum(target.encode() in row for (_, target), row in zip(chunk, top))
  return hits / len(cases)


def test_online_model_beats_the_frozen_initial_model_on_the_next_events(stream, online):
  known = positives(stream["initial"], *stream["batches"]).groupby("user_id").video_id.agg(list)
  following = positives(stream["probe"]).groupby("user_id").video_id.first()
  cases = [(known[u][-64:], target) for u, target in following.items() if u in known.index]
  frozen = _hit_rate(online["base"] / "1", cases)
  latest = _hit_rate(online["base"] / str(BATCHES + 1), cases)
  print(f"HR@{K} on the events after the last batch ({len(cases)} users): frozen initial model "
        f"{frozen:.3f}, online model {latest:.3f}")
  assert len(cases) > 150
  assert latest > frozen + 0.03


def _state(state_dir):
  from online.state import StateDir, StreamState
  number, path = StateDir(str(state_dir)).current()
  return number, path, StreamState.read(path)


def test_killed_trainer_resumed_and_consumed_every_file_exactly_once(stream, online):
  assert online["exits"] == [-signal.SIGKILL, 0]
  restarts = [[json.loads(l) for l in log.splitlines() if l.startswith("{")] for log in online["logs"]]
  recovered = [[r["discarded"] for r in records if r["event"] == "recovered"] for records in restarts]
  assert recovered == [[], [[f"gen-{BATCHES:08d}"]]], "renamed but not committed: discarded"

  number, path, state = _state(online["state"])
  names = [os.path.basename(p) for p in stream["batches"]]
  assert number == BATCHES
  assert [e["name"] for e in state.ledger] == names, "each file consumed once, in order"
  assert [e["generation"] for e in state.ledger] == list(range(1, BATCHES + 1))
  data_lines = sum(len(open(p).read().splitlines()) - 1 for p in stream["batches"])
  c = state.counts
  assert c["rows_in"] == data_lines
  assert c["rows_in"] == c["rows_accepted"] + c["rows_rejected"] + c["rows_filtered"]
  assert c["rows_rejected"] == c["dead_letters_total"] == CORRUPT_ROWS * BATCHES
  assert c["rows_accepted"] == c["targets"] + c["first_events"]
  assert c["examples"] < c["targets"], "every_event: one example per user's chunk of new targets"
  assert c["rows_accepted"] == len(positives(*stream["batches"]))
  # Stable ids: the initial vocabulary is a prefix of the grown one.
  with open(os.path.join(stream["data"], "vocab", "item.txt")) as f:
    initial = f.read().splitlines()
  assert state.items[:len(initial)] == initial and len(state.items) > len(initial)
  assert len(set(state.items)) == len(state.items)
  # Each history is exactly the user's newest max_len positive events, none twice or lost.
  expected = positives(stream["initial"], *stream["batches"]).groupby("user_id").video_id.agg(list)
  assert sorted(state.histories) == sorted(expected.index)
  for user, h in state.histories.items():
    assert [state.items[i - 2] for i in h["item"]] == expected[user][-64:], user
  # Training continued from the initial checkpoint through every committed batch, Adam
  # step included: the killed runs' uncommitted training left no trace.
  start = int(tf.train.load_checkpoint(os.path.join(stream["run"], "weights", "final")).get_tensor(ITERATIONS))
  committed = [r for records in restarts for r in records if r["event"] == "committed"]
  assert [r["generation"] for r in committed] == list(range(1, BATCHES + 1))
  with open(os.path.join(path, "metadata.json")) as f:
    metadata = json.load(f)
  assert metadata["online"]["optimizer_step"] == start + sum(r["steps"] for r in committed)
  # The catalog the trainer keeps in memory is the one its files give back.
  from tfkf.catalog import Catalog
  loaded, held = Catalog.load(path), state.catalog()
  for field in ("item_ids", "tag", "author", "duration", "sampling_probability"):
    np.testing.assert_array_equal(getattr(held, field), getattr(loaded, field), err_msg=field)
  assert held.vocab_sizes == loaded.vocab_sizes
  # The restarted trainer held its model from the start: the batch grew it in place, into
  # the spare rows its tables keep beyond the vocabulary.
  assert metadata["online"]["model_in_place"]
  assert metadata["item_table_rows"] > metadata["vocab_sizes"]["item"] == len(state.items) + 2


def test_freshness_benchmark_of_the_split_at_a_larger_catalog(stream, online, tmp_path):
  """benchmarks.freshness on this module's stream, build and first model (after the
  online fixture is done with the CPU), padded to a catalog of 5,000 items and served
  split: one batch landed, trained on (in a process of its own) and served as a new user
  tower; the item index, on its own cadence, is exported again only by the stopping trainer."""
  out, work, size = tmp_path / "freshness.json", tmp_path / "w", 5000
  cli.run_in_process("benchmarks.freshness", f"--prepared_dir={stream['dir']}", f"--workdir={work}",
                     "--batches=1", "--index=brute_force", f"--top_k={K}", f"--catalog_size={size}",
                     "--servable=user_tower", "--lazy_adam", "--before_training_examples=50",
                     "--export_in_child", "--batch_in_child", "--load_client", "--load_client_rate=20",
                     f"--output={out}")
  result = json.loads(out.read_text())
  (row,) = result["batches"]
  assert result["load_client"]["calls"] > 10 and result["load_client"]["failed"] == 0, result["load_client"]
  assert row["file"] == os.path.basename(stream["batches"][0]) and row["version"] == 2
  assert row["rows_in"] > 0 and row["train_steps"] > 0
  assert 0 <= row["pickup_s"] < row["freshness_s"] == result["median_freshness_s"]
  assert set(result["peak_rss_mb"]) == {"online.train", "serving.server"}
  assert min(result["peak_rss_mb"].values()) > 100
  assert sorted(os.listdir(work / "models" / "user_tower")) == ["1", "2"]
  # The index's own cadence (600 s) never came due: its version 2 is the stopping trainer's.
  tower, index = ([_lineage(work / "models" / name, v) for v in (1, 2)] for name in ("user_tower", "item_index"))
  assert sorted(os.listdir(work / "models" / "item_index")) == ["1", "2"]
  assert [l["generation"] for l in tower] == [l["generation"] for l in index] == [0, 1]
  assert index[1]["exported_at"] > tower[1]["exported_at"], "the tower first, then the index"
  number, path, state = _state(work / "state")
  assert number == 1 and len(state.items) == size + row["new_items"]
  with open(os.path.join(path, "metadata.json")) as f:
    assert json.load(f)["online"]["before_training"]["examples"] == 50
  with open(os.path.join(path, "config.json")) as f:
    assert json.load(f)["lazy_adam"], "the padded start continues with LazyAdam"
  with open(os.path.join(stream["data"], "vocab", "item.txt")) as f:
    built = f.read().splitlines()
  assert state.items[:size] == built + [f"synthetic-{i}" for i in range(size - len(built))]
  from benchmarks.report import render
  assert "Online learning freshness" in render([result])


def test_every_event_examples_supervise_each_new_target_once():
  """A model trained every_event continues on examples of up to chunk_len targets that say
  how many trailing targets they supervise: each new event is supervised once, old ones never."""
  import numpy as np
  from tfkf import features
  from online.train import new_examples
  from online.state import HISTORY_KEYS, StreamState
  n = 40
  state = lambda: StreamState(  # noqa: E731
      items=[f"v{i}" for i in range(n)], tags=[], authors=[], recent_count=np.zeros(n),
      **{k: np.zeros(n, np.int64) for k in ("item_tag", "item_author", "item_duration", "item_count")},
      ledger=[], counts={}, histories={"old": {k: np.array([2, 3, 4]) for k in HISTORY_KEYS}})
  raw = {name: 0.0 for name in features.EVENT_RAW_INPUTS.values()}
  events = [{"user": "old", "time": t, "order": t, "item": f"v{t + 3}", **raw} for t in range(11)]
  events += [{"user": "new", "time": t, "order": t, "item": f"v{t + 20}", **raw} for t in range(6)]

  def supervised(train, first_event_targets=False):
    targets = []
    for payload in train:
      f = tf.train.Example.FromString(payload).features.feature
      history = list(f[features.HISTORY_ITEM].int64_list.value)
      count = f[features.NUM_TARGETS].int64_list.value[0]
      assert 1 <= count <= 4 and count - first_event_targets <= len(history) <= 8
      # the model's cut points: after each history event, and before a whole history's first
      before = history[:1] if first_event_targets else []
      targets += (before + history[1:] + list(f[features.TARGET_ITEM].int64_list.value))[-count:]
    return sorted(targets)

  train, test, stats = new_examples(state(), events, max_len=8, chunk_len=4)
  assert (stats["targets"], stats["first_events"]) == (16, 1)  # "new"'s first event: history only
  assert supervised(train) == [i + 2 for i in range(3, 14)] + [i + 2 for i in range(21, 26)]
  assert len(train) == 3 + 2 and len(test) == 2  # 11 targets in chunks of 4; 5 targets
  # A model with first-event targets: "new"'s first event is one, of its earliest chunk.
  train, _, stats = new_examples(state(), events, max_len=8, chunk_len=4, first_event_targets=True)
  assert (stats["targets"], stats["first_events"]) == (17, 0)
  assert supervised(train, True) == [i + 2 for i in range(3, 14)] + [i + 2 for i in range(20, 26)]
  assert len(train) == 3 + 2
  solo = [{"user": "solo", "time": 0, "order": 0, "item": "v30", **raw}]
  train, test, stats = new_examples(state(), solo, max_len=8, chunk_len=4, first_event_targets=True)
  assert (len(train), len(test), stats["targets"]) == (1, 0, 1)  # an empty history is no test
  per_target, _, _ = new_examples(state(), events, max_len=8)  # the paper's one target per example
  assert len(per_target) == 16


def test_only_the_pointer_commits_a_generation(tmp_path):
  from online.state import StateDir
  state_dir = StateDir(str(tmp_path))
  assert state_dir.current() is None
  for number in range(3):
    work = state_dir.work_dir(number)
    (tmp_path / "generations" / os.path.basename(work) / "n").write_text(str(number))
    state_dir.commit(work, number)
  assert state_dir.current()[0] == 2
  assert sorted(os.listdir(tmp_path / "generations")) == ["gen-00000001", "gen-00000002"]

  def crash():
    raise KeyboardInterrupt("killed between the rename and the pointer")

  state_dir.work_dir(4)  # a half-written batch
  with pytest.raises(KeyboardInterrupt):
    state_dir.commit(state_dir.work_dir(3), 3, before_pointer=crash)
  assert (tmp_path / "generations" / "gen-00000003").exists()
  restarted = StateDir(str(tmp_path))
  assert restarted.recover() == [".work-00000004", "gen-00000003"]
  number, path = restarted.current()
  assert number == 2 and open(os.path.join(path, "n")).read() == "2"
