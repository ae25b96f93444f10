"""Held-out next items of a KuaiRand-style log, and the most-popular baseline on it."""

import collections

import pandas as pd


def positives(log_csv: str) -> pd.DataFrame:
  """The events the build job keeps by default (is_click or long_view), time-ordered per user."""
  log = pd.read_csv(log_csv, dtype={"user_id": str, "video_id": str})
  log = log[(log.is_click == 1) | (log.long_view == 1)]
  return log.sort_values(["user_id", "time_ms"], kind="stable")


def leave_one_out(log_csv: str, max_users: int = None):
  """[(user, history ids oldest first, held-out last id)] and train-item counts."""
  cases, counts = [], collections.Counter()
  for user, events in positives(log_csv).groupby("user_id", sort=True):
    items = events.video_id.tolist()
    if len(items) < 3:
      continue
    counts.update(items[:-2])
    cases.append((user, items[:-1], items[-1]))
  return cases[:max_users], counts


def most_popular_hit_rate(cases, counts, k: int) -> float:
  ranked = [item for item, _ in counts.most_common()]
  hits = 0
  for _, history, target in cases:
    seen = set(history)
    hits += target in [i for i in ranked[:k + len(seen)] if i not in seen][:k]
  return hits / len(cases)
