"""A synthetic log stream: an initial log, then arriving batches with drift and new items.

The local stand-in for a log topic that `online.train` consumes. The same users
keep watching after the initial log, batch after batch, and:

* their interests drift: each batch, one interest of a user may be replaced;
* new items arrive in every batch and enter their tag cluster as its most
  popular items (fresh short videos are what gets watched);
* the first new item of the last batch is a hit: most users with its tag, and
  some without, watch it in that batch.

Rows follow the KuaiRand layout and watch model of `beam_pipelines.synthetic`
(unclicked impressions included, so the positive filter has work to do).
Deterministic for a seed.

  python -m beam_pipelines.synthetic_stream --users 300 --items 400 --batches 4 \
      --output_dir data/stream

Writes into --output_dir: initial/log.csv (build and train the first model on
it), items.csv (the item table, new items included), batches/batch-NNNNN.csv
(the stream, in landing order), probe.csv (the events right after the last
batch, held out for evaluation) and truth.json (new items per batch, the hit).
"""

import argparse
import csv
import json
import os

import numpy as np

from beam_pipelines import synthetic

START_MS = 1_700_000_000_000


class _User:
  """One simulated user: interests (tag ids), clock and items already watched."""

  def __init__(self, rng, num_tags):
    self.interests = [int(t) for t in rng.choice(num_tags, rng.integers(2, 5), replace=False)]
    self.current = int(rng.integers(len(self.interests)))
    self.time = START_MS + int(rng.integers(0, 86_400_000))
    self.seen = set()


class StreamSimulator:
  """Generates the initial log and each batch from one random stream."""

  def __init__(self, args):
    self.args = args
    self.rng = np.random.default_rng(args.seed)
    total = args.items + args.new_items_per_batch * args.batches
    self.tags, self.authors, self.durations_ms = synthetic.make_items(
        self.rng, total, args.tags, args.authors)
    # Per tag: item ids from most to least popular (Zipf weights by rank).
    self.ranked = [list(self.rng.permutation(np.flatnonzero(self.tags[:args.items] == t)))
                   for t in range(args.tags)]
    self.users = [_User(self.rng, args.tags) for _ in range(args.users)]
    self.hit_item = args.items + args.new_items_per_batch * (args.batches - 1)
    self.new_items = {}

  def arrive(self, batch: int) -> list:
    """Batch `batch`'s new items: each goes to the front of its tag's ranking."""
    first = self.args.items + self.args.new_items_per_batch * (batch - 1)
    items = list(range(first, first + self.args.new_items_per_batch))
    for item in reversed(items):
      self.ranked[int(self.tags[item])].insert(0, item)
    self.new_items[batch] = items
    return items

  def drift(self) -> None:
    for user in self.users:
      if self.rng.random() < self.args.batch_drift_prob:
        user.interests[int(self.rng.integers(len(user.interests)))] = int(
            self.rng.integers(self.args.tags))

  def events(self, low: int, high: int, hit: bool = False) -> list:
    """Rows of every user, `low`..`high` events each (plus the hit when `hit`)."""
    rows = []
    for uid, user in enumerate(self.users):
      n = int(self.rng.integers(low, high + 1))
      watches_hit = hit and self.rng.random() < (
          self.args.hit_prob if int(self.tags[self.hit_item]) in user.interests
          else self.args.hit_prob_others)
      hit_at = int(self.rng.integers(n)) if watches_hit else -1
      for i in range(n):
        if i == hit_at and self.hit_item not in user.seen:
          rows.append(self._impression(uid, user, self.hit_item, matches=True))
          continue
        if self.rng.random() < self.args.switch_prob:
          user.current = int(self.rng.integers(len(user.interests)))
        noise = self.rng.random() < self.args.noise_prob
        tag = int(self.rng.integers(self.args.tags)) if noise else user.interests[user.current]
        item = self._pick(tag, user.seen)
        if item is not None:
          rows.append(self._impression(uid, user, item, matches=not noise))
    return rows

  def _pick(self, tag: int, seen: set):
    ranked = [i for i in self.ranked[tag] if i not in seen]
    if not ranked:
      return None
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** self.args.zipf
    return int(ranked[int(self.rng.choice(len(ranked), p=weights / weights.sum()))])

  def _impression(self, uid: int, user: _User, item: int, matches: bool) -> tuple:
    """One log row; the watch model of beam_pipelines.synthetic.user_events."""
    user.seen.add(item)
    user.time += int(self.rng.integers(5_000, 600_000))
    duration = int(self.durations_ms[item])
    ratio = self.rng.beta(5, 2) if matches else self.rng.beta(1.2, 5)
    play = int(duration * ratio * (1.3 if self.rng.random() < 0.1 else 1.0))
    clicked = matches or self.rng.random() < 0.5
    like = int(clicked and self.rng.random() < (0.25 if matches else 0.03))
    return (uid, item, user.time, play, duration, int(clicked), like,
            int(like and self.rng.random() < 0.2), int(like and self.rng.random() < 0.3),
            int(self.rng.random() < 0.02), int((not matches) and self.rng.random() < 0.02),
            int(ratio > 0.6))


def _write_log(path: str, rows, corrupt_rows: int = 0) -> None:
  """KuaiRand CSV; `corrupt_rows` malformed lines at the end feed the dead-letter output."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(synthetic.LOG_COLUMNS)
    writer.writerows(rows)
    for i in range(corrupt_rows):
      f.write(f"corrupt-{i},not,a,row\n")
  os.replace(tmp, path)  # Readers of the directory never see half a file.


def generate(args) -> dict:
  """Writes every file (see the module docstring); returns their paths and the truth."""
  sim = StreamSimulator(args)
  out = os.path.abspath(args.output_dir)
  _write_log(os.path.join(out, "initial", "log.csv"),
             sim.events(args.initial_min_events, args.initial_max_events))
  batches = []
  for batch in range(1, args.batches + 2):  # the last one is the held-out probe
    if batch <= args.batches:
      sim.arrive(batch)
    sim.drift()
    rows = sim.events(args.batch_min_events, args.batch_max_events, hit=batch >= args.batches)
    if batch <= args.batches:
      path = os.path.join(out, "batches", f"batch-{batch:05d}.csv")
      _write_log(path, rows, args.corrupt_rows)
      batches.append(path)
    else:
      _write_log(os.path.join(out, "probe.csv"), rows)
  items_path = os.path.join(out, "items.csv")
  with open(items_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(synthetic.ITEM_COLUMNS)
    for item in range(len(sim.tags)):
      writer.writerow((item, sim.authors[item], sim.durations_ms[item], str(sim.tags[item])))
  truth = {"seed": args.seed, "initial_items": args.items,
           "new_items": {str(b): items for b, items in sim.new_items.items()},
           "hit_item": str(sim.hit_item), "hit_tag": int(sim.tags[sim.hit_item]),
           "item_tag": sim.tags.tolist(),
           "interests_at_probe": {str(u): user.interests for u, user in enumerate(sim.users)}}
  with open(os.path.join(out, "truth.json"), "w") as f:
    json.dump(truth, f)
  return {"initial": os.path.join(out, "initial", "log.csv"), "items": items_path,
          "batches": batches, "probe": os.path.join(out, "probe.csv"), "truth": truth}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--users", type=int, default=300)
  p.add_argument("--items", type=int, default=400, help="items of the initial log")
  p.add_argument("--tags", type=int, default=16, help="latent interest clusters")
  p.add_argument("--authors", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batches", type=int, default=4, help="arriving batch files")
  p.add_argument("--new_items_per_batch", type=int, default=20)
  p.add_argument("--initial_min_events", type=int, default=20)
  p.add_argument("--initial_max_events", type=int, default=40)
  p.add_argument("--batch_min_events", type=int, default=4)
  p.add_argument("--batch_max_events", type=int, default=8)
  p.add_argument("--zipf", type=float, default=1.1, help="popularity exponent")
  p.add_argument("--switch_prob", type=float, default=0.25,
                 help="chance per event to switch to another interest")
  p.add_argument("--batch_drift_prob", type=float, default=0.5,
                 help="chance per batch that one interest of a user is replaced")
  p.add_argument("--noise_prob", type=float, default=0.1,
                 help="chance per event of an item outside every interest")
  p.add_argument("--hit_prob", type=float, default=0.9,
                 help="last batch: chance a user with the hit's tag watches it")
  p.add_argument("--hit_prob_others", type=float, default=0.2,
                 help="last batch: chance any other user watches it")
  p.add_argument("--corrupt_rows", type=int, default=0,
                 help="malformed lines appended to each batch file (dead letters)")
  return p.parse_args(argv)


def main(argv=None):
  result = generate(parse_args(argv))
  print(f"wrote {result['initial']}, {len(result['batches'])} batches, {result['probe']}, "
        f"{result['items']}")


if __name__ == "__main__":
  main()
