"""Synthetic short-video interaction log with planted, learnable structure.

Writes KuaiRand-style CSV logs plus an item file and the ground truth:

* items belong to tag clusters; popularity inside a cluster is Zipf;
* each user holds several latent interests (clusters) and alternates between
  them in runs; interests drift over time (one may be replaced);
* watch time is longer when an item matches the current interest;
* some impressions are not clicked (the positive-event filter drops them).

Deterministic for a seed.

  python -m beam_pipelines.synthetic --users 2000 --items 3000 --seed 7 \
      --output data/log.csv
"""

import argparse
import csv
import json
import os

import numpy as np

LOG_COLUMNS = ("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms",
               "is_click", "is_like", "is_follow", "is_comment", "is_forward",
               "is_hate", "long_view")
ITEM_COLUMNS = ("video_id", "author_id", "video_duration", "tag")


def make_items(rng, num_items, num_tags, num_authors):
  tags = rng.integers(0, num_tags, num_items)
  authors = rng.integers(0, num_authors, num_items)
  durations_ms = (rng.lognormal(np.log(40.0), 0.8, num_items) * 1000).astype(int) + 3000
  return tags, authors, durations_ms


def cluster_sampler(rng, tags, num_tags, zipf_a):
  """Per tag: its item ids and Zipf popularity weights over them."""
  by_tag = []
  for t in range(num_tags):
    members = np.flatnonzero(tags == t)
    members = rng.permutation(members)
    weights = 1.0 / np.arange(1, len(members) + 1) ** zipf_a
    by_tag.append((members, weights / weights.sum()))
  return by_tag


def user_events(rng, user, by_tag, num_tags, durations_ms, args, start_ms):
  """One user's events and interests, oldest first."""
  interests = list(rng.choice(num_tags, rng.integers(2, 5), replace=False))
  history_interests = [list(map(int, interests))]
  length = int(rng.integers(args.min_events, args.max_events + 1))
  current = int(rng.integers(len(interests)))
  seen = set()
  t = start_ms
  rows = []
  while len(rows) < length:
    if rng.random() < args.switch_prob:
      current = int(rng.integers(len(interests)))
    if rng.random() < args.drift_prob:
      slot = int(rng.integers(len(interests)))
      interests[slot] = int(rng.integers(num_tags))
      history_interests.append(list(map(int, interests)))
    if rng.random() < args.noise_prob:
      tag = int(rng.integers(num_tags))
    else:
      tag = interests[current]
    members, weights = by_tag[tag]
    if len(members) == 0:
      continue
    item = int(rng.choice(members, p=weights))
    if item in seen:
      continue
    seen.add(item)
    t += int(rng.integers(5_000, 600_000))
    matches = tag == interests[current]
    duration = int(durations_ms[item])
    ratio = rng.beta(5, 2) if matches else rng.beta(1.2, 5)
    play = int(duration * ratio * (1.3 if rng.random() < 0.1 else 1.0))
    clicked = matches or rng.random() < 0.5
    like = int(clicked and rng.random() < (0.25 if matches else 0.03))
    rows.append((user, item, t, play, duration, int(clicked), like,
                 int(like and rng.random() < 0.2), int(like and rng.random() < 0.3),
                 int(rng.random() < 0.02), int((not matches) and rng.random() < 0.02),
                 int(ratio > 0.6)))
  return rows, history_interests


def generate(args):
  rng = np.random.default_rng(args.seed)
  tags, authors, durations_ms = make_items(rng, args.items, args.tags, args.authors)
  by_tag = cluster_sampler(rng, tags, args.tags, args.zipf)
  out_dir = os.path.dirname(os.path.abspath(args.output))
  os.makedirs(out_dir, exist_ok=True)
  truth = {}
  with open(args.output, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(LOG_COLUMNS)
    for user in range(args.users):
      start = 1_700_000_000_000 + int(rng.integers(0, 86_400_000))
      rows, interests = user_events(rng, user, by_tag, args.tags, durations_ms, args, start)
      writer.writerows(rows)
      truth[str(user)] = interests
  items_path = args.items_output or os.path.join(out_dir, "items.csv")
  with open(items_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(ITEM_COLUMNS)
    for item in range(args.items):
      writer.writerow((item, authors[item], durations_ms[item], str(tags[item])))
  truth_path = args.truth_output or os.path.join(out_dir, "ground_truth.json")
  with open(truth_path, "w") as f:
    json.dump({"seed": args.seed, "item_tag": tags.tolist(),
               "user_interests_over_time": truth}, f)
  return os.path.abspath(args.output), items_path, truth_path


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--users", type=int, default=2000)
  p.add_argument("--items", type=int, default=3000)
  p.add_argument("--tags", type=int, default=40, help="latent interest clusters")
  p.add_argument("--authors", type=int, default=500)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--min_events", type=int, default=20)
  p.add_argument("--max_events", type=int, default=80)
  p.add_argument("--zipf", type=float, default=1.1, help="popularity exponent")
  p.add_argument("--switch_prob", type=float, default=0.25,
                 help="chance per event to switch to another interest")
  p.add_argument("--drift_prob", type=float, default=0.01,
                 help="chance per event that one interest is replaced")
  p.add_argument("--noise_prob", type=float, default=0.1,
                 help="chance per event of an item outside every interest")
  p.add_argument("--output", required=True, help="log CSV path")
  p.add_argument("--items_output", help="item CSV path (default: items.csv beside the log)")
  p.add_argument("--truth_output", help="ground truth JSON (default: beside the log)")
  return p.parse_args(argv)


def main(argv=None):
  log, items, truth = generate(parse_args(argv))
  print(f"wrote {log}, {items}, {truth}")


if __name__ == "__main__":
  main()
