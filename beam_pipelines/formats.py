"""Input formats: one raw line in, one validated event (or a rejection) out.

Each parser returns `Parsed(event=..., positive=...)` or raises `BadRow` with a
reason that ends up in the dead-letter output. Events are plain dicts with the
keys of `Event` so that every runner can pickle them.
"""

import csv
import dataclasses
import math
from typing import Dict, Optional, Sequence

MAX_TIME = 2**62  # Larger "times" are corrupt, not far in the future.


class BadRow(ValueError):
  """A row that cannot become an event; the message is the dead-letter reason."""


@dataclasses.dataclass
class Parsed:
  event: Dict
  positive: bool


def _float(fields: Dict[str, str], name: str, default=None, minimum=None):
  raw = fields.get(name)
  if raw is None or raw == "":
    if default is None:
      raise BadRow(f"missing field {name!r}")
    return default
  try:
    value = float(raw)
  except ValueError:
    raise BadRow(f"non-numeric {name!r}: {raw[:40]!r}") from None
  if not math.isfinite(value):
    raise BadRow(f"non-finite {name!r}: {raw[:40]!r}")
  if minimum is not None and value < minimum:
    raise BadRow(f"negative {name!r}: {raw[:40]!r}")
  return value


def _id(fields: Dict[str, str], name: str) -> str:
  value = (fields.get(name) or "").strip()
  if not value:
    raise BadRow(f"empty {name!r}")
  return value


def _time(fields: Dict[str, str], name: str) -> int:
  value = _float(fields, name)
  if value < 0 or value > MAX_TIME or value != int(value):
    raise BadRow(f"out-of-range {name!r}: {fields[name][:40]!r}")
  return int(value)


def event(user: str, item: str, time: int, watch_time_s=0.0, watch_ratio=0.0,
          is_like=0, is_follow=0, is_comment=0, is_forward=0,
          duration_s: Optional[float] = None) -> Dict:
  return {"user": user, "item": item, "time": time,
          "watch_time_s": watch_time_s, "watch_ratio": watch_ratio,
          "is_like": is_like, "is_follow": is_follow, "is_comment": is_comment,
          "is_forward": is_forward, "duration_s": duration_s}


class KuaiRand:
  """KuaiRand/KuaiRec-style CSV with a header row.

  Positive filter (default): is_click == 1 or long_view == 1; a log without
  either column counts every row as positive.
  """
  REQUIRED = ("user_id", "video_id", "time_ms")
  name = "kuairand"
  has_header = True

  def __init__(self, header: Sequence[str]):
    self.columns = list(header)
    missing = [c for c in self.REQUIRED if c not in self.columns]
    if missing:
      raise ValueError(f"kuairand header lacks required columns {missing}: {self.columns}")

  def parse(self, line: str) -> Parsed:
    values = next(csv.reader([line]))
    if len(values) != len(self.columns):
      raise BadRow(f"expected {len(self.columns)} fields, got {len(values)}")
    f = dict(zip(self.columns, values))
    play_ms = _float(f, "play_time_ms", 0.0, minimum=0)
    duration_ms = _float(f, "duration_ms", 0.0, minimum=0)
    ev = event(
        user=_id(f, "user_id"), item=_id(f, "video_id"), time=_time(f, "time_ms"),
        watch_time_s=play_ms / 1000.0,
        watch_ratio=play_ms / duration_ms if duration_ms > 0 else 0.0,
        is_like=int(_float(f, "is_like", 0.0, minimum=0)),
        is_follow=int(_float(f, "is_follow", 0.0, minimum=0)),
        is_comment=int(_float(f, "is_comment", 0.0, minimum=0)),
        is_forward=int(_float(f, "is_forward", 0.0, minimum=0)),
        duration_s=duration_ms / 1000.0 if duration_ms > 0 else None)
    has_flags = "is_click" in f or "long_view" in f
    positive = (not has_flags or _float(f, "is_click", 0.0) == 1
                or _float(f, "long_view", 0.0) == 1)
    return Parsed(ev, positive)


class SASRec:
  """`user item` per line; a user's lines are in time order (line order is time)."""
  name = "sasrec"
  has_header = False

  def __init__(self, header=None):
    del header

  def parse(self, line: str) -> Parsed:
    parts = line.split()
    if len(parts) != 2:
      raise BadRow(f"expected 2 fields 'user item', got {len(parts)}")
    return Parsed(event(user=parts[0], item=parts[1], time=0), True)


FORMATS = {cls.name: cls for cls in (KuaiRand, SASRec)}


def parse_item_row(header: Sequence[str], line: str):
  """Item-feature CSV row -> (video_id, {"tag", "author", "duration_s"})."""
  values = next(csv.reader([line]))
  if len(values) != len(header):
    raise BadRow(f"expected {len(header)} fields, got {len(values)}")
  f = dict(zip(header, values))
  tags = [t.strip() for t in (f.get("tag") or "").split(",") if t.strip()]
  duration_ms = _float(f, "video_duration", 0.0, minimum=0)
  return _id(f, "video_id"), {
      "tag": tags[0] if tags else None,
      "author": (f.get("author_id") or "").strip() or None,
      "duration_s": duration_ms / 1000.0 if duration_ms > 0 else None,
  }
