"""Input formats: records of a file in, validated events (or rejections) out.

A format reads a file into numbered raw records (`records`) and turns one
record into `Parsed(event, positive)` or raises `BadRow` with the reason that
goes to the dead-letter output. Events are plain dicts (see `event`) so that
every runner can pickle them. `provides` names the event features a format
fills in; the others stay "unknown".
"""

import csv
import dataclasses
import io
import json
import math
from typing import Dict, Iterator, Optional, Sequence, Tuple

from tfkf import features

MAX_TIME = 2**62  # Larger "times" are corrupt, not far in the future.
RAW_FEATURES = tuple(features.EVENT_RAW_INPUTS.values())  # the raw value of each event feature
CANONICAL = ("user", "item", "time", "duration_s") + RAW_FEATURES


class BadRow(ValueError):
  """A record that cannot become an event; the message is the dead-letter reason."""


@dataclasses.dataclass
class Parsed:
  event: Dict
  positive: bool


def event(user: str, item: str, time: int, duration_s: Optional[float] = None, **raw) -> Dict:
  unknown = set(raw) - set(RAW_FEATURES)
  if unknown:
    raise TypeError(f"unknown event fields {sorted(unknown)}")
  return {"user": user, "item": item, "time": time, "duration_s": duration_s,
          **{name: float(raw.get(name, 0.0)) for name in RAW_FEATURES}}


def number(fields: Dict, name: str, default=None, minimum=None) -> float:
  raw = fields.get(name)
  if raw is None or raw == "":
    if default is None:
      raise BadRow(f"missing field {name!r}")
    return default
  try:
    value = float(raw)
  except (TypeError, ValueError):
    raise BadRow(f"non-numeric {name!r}: {str(raw)[:40]!r}") from None
  if not math.isfinite(value):
    raise BadRow(f"non-finite {name!r}: {str(raw)[:40]!r}")
  if minimum is not None and value < minimum:
    raise BadRow(f"negative {name!r}: {str(raw)[:40]!r}")
  return value


def identifier(fields: Dict, name: str) -> str:
  value = str(fields.get(name) if fields.get(name) is not None else "").strip()
  if not value:
    raise BadRow(f"empty {name!r}")
  return value


def timestamp(fields: Dict, name: str) -> int:
  value = number(fields, name)
  if value < 0 or value > MAX_TIME or value != int(value):
    raise BadRow(f"out-of-range {name!r}: {str(fields[name])[:40]!r}")
  return int(value)


def split_csv(text: str, columns: Sequence[str], sep: str = ",") -> Dict[str, str]:
  values = next(csv.reader([text], delimiter=sep)) if sep == "," else text.split(sep)
  if len(values) != len(columns):
    raise BadRow(f"expected {len(columns)} fields, got {len(values)}")
  return dict(zip(columns, values))


class LineFormat:
  """A text format, one record per line; `header_of` says if line 1 is a header."""
  name = ""
  provides: Tuple[str, ...] = ()

  def __init__(self, header: Tuple[str, ...] = (), **options):
    self.header = header
    self.options = options

  @classmethod
  def header_of(cls, first_line: str) -> Optional[Tuple[str, ...]]:
    return None

  @classmethod
  def records(cls, f) -> Iterator[Tuple[int, bytes, Tuple[str, ...]]]:
    """(line number, raw bytes, header) for each data line of an open binary file."""
    header = ()
    for number_, raw in enumerate(f, start=1):
      raw = raw.rstrip(b"\r\n")
      if number_ == 1:
        detected = cls.header_of(raw.decode("utf-8-sig", errors="replace"))
        if detected is not None:
          header = detected
          continue
      yield number_, raw, header

  def decode(self, raw: bytes) -> str:
    text = raw.decode("utf-8")
    if not text.strip():
      raise BadRow("empty line")
    return text

  def parse(self, raw: bytes) -> Parsed:
    raise NotImplementedError


class KuaiRand(LineFormat):
  """KuaiRand/KuaiRec log CSV. Positive: is_click == 1 or long_view == 1 (all
  rows when neither column exists)."""
  name = "kuairand"
  provides = ("watch_time", "watch_ratio", "like", "follow", "comment", "forward")
  REQUIRED = ("user_id", "video_id", "time_ms")

  @classmethod
  def header_of(cls, first_line):
    return tuple(c.strip() for c in next(csv.reader([first_line])))

  def __init__(self, header=(), **options):
    super().__init__(header, **options)
    missing = [c for c in self.REQUIRED if c not in header]
    if missing:
      raise ValueError(f"kuairand header lacks required columns {missing}: {list(header)}")

  def parse(self, raw):
    f = split_csv(self.decode(raw), self.header)
    play_ms = number(f, "play_time_ms", 0.0, minimum=0)
    duration_ms = number(f, "duration_ms", 0.0, minimum=0)
    labels = {k: number(f, k, 0.0, minimum=0)
              for k in ("is_like", "is_follow", "is_comment", "is_forward")}
    ev = event(identifier(f, "user_id"), identifier(f, "video_id"), timestamp(f, "time_ms"),
               duration_s=duration_ms / 1000.0 if duration_ms > 0 else None,
               watch_time_s=play_ms / 1000.0,
               watch_ratio=play_ms / duration_ms if duration_ms > 0 else 0.0, **labels)
    has_flags = "is_click" in f or "long_view" in f
    positive = (not has_flags or number(f, "is_click", 0.0) == 1
                or number(f, "long_view", 0.0) == 1)
    return Parsed(ev, positive)


class SASRec(LineFormat):
  """`user item` per line; a user's lines are in time order (line order is time)."""
  name = "sasrec"

  def parse(self, raw):
    parts = self.decode(raw).split()
    if len(parts) != 2:
      raise BadRow(f"expected 2 fields 'user item', got {len(parts)}")
    return Parsed(event(parts[0], parts[1], 0), True)


class MovieLens(LineFormat):
  """ml-100k `u.data` (tab), ml-1m/10m `ratings.dat` (`::`), ml-latest/20m/25m
  `ratings.csv` (header), detected from each file's first line. Every rating is
  positive unless --min_rating is set."""
  name = "movielens"
  provides = ("rating",)
  CSV_HEADER = ("userId", "movieId", "rating", "timestamp")

  @classmethod
  def header_of(cls, first_line):
    return cls.CSV_HEADER if first_line.strip().startswith("userId") else None

  def parse(self, raw):
    text = self.decode(raw)
    if self.header:
      f = split_csv(text, self.header)
    elif "::" in text:
      f = split_csv(text, self.CSV_HEADER, sep="::")
    else:
      f = split_csv(text, self.CSV_HEADER, sep="\t")
    rating = number(f, "rating", minimum=0)
    ev = event(identifier(f, "userId"), identifier(f, "movieId"), timestamp(f, "timestamp"),
               rating=rating)
    return Parsed(ev, rating >= (self.options.get("min_rating") or 0.0))


class Columnar(LineFormat):
  """Generic rows with a --columns mapping (canonical=source column), e.g.
  `user=uid,item=vid,time=ts,watch_time_s=play_s`. Every row is positive unless
  --positive_column names a column that must be truthy (non-zero)."""
  provides_by_field = {raw: name for name, raw in features.EVENT_RAW_INPUTS.items()}

  def __init__(self, header=(), columns: Dict[str, str] = None, **options):
    super().__init__(header, **options)
    self.columns = columns or {}
    for required in ("user", "item", "time"):
      if required not in self.columns:
        raise ValueError(f"--columns must map {required!r} (got {self.columns})")

  @classmethod
  def provided(cls, columns: Dict[str, str]) -> Tuple[str, ...]:
    return tuple(v for k, v in cls.provides_by_field.items() if k in columns)

  def fields(self, raw) -> Dict:
    raise NotImplementedError

  def parse(self, raw):
    f = self.fields(raw)
    get = {canonical: f.get(column) for canonical, column in self.columns.items()}
    raw_features = {k: number(get, k, 0.0, minimum=0) for k in RAW_FEATURES if k in get}
    duration = number(get, "duration_s", 0.0, minimum=0) if "duration_s" in get else 0.0
    ev = event(identifier(get, "user"), identifier(get, "item"), timestamp(get, "time"),
               duration_s=duration or None, **raw_features)
    positive_column = self.options.get("positive_column")
    positive = not positive_column or number(f, positive_column, 0.0) != 0
    if "rating" in raw_features and self.options.get("min_rating"):
      positive = positive and raw_features["rating"] >= self.options["min_rating"]
    return Parsed(ev, positive)


class Csv(Columnar):
  name = "csv"

  @classmethod
  def header_of(cls, first_line):
    return tuple(c.strip() for c in next(csv.reader([first_line])))

  def fields(self, raw):
    return split_csv(self.decode(raw), self.header)


class JsonLines(Columnar):
  name = "jsonl"

  def fields(self, raw):
    try:
      row = json.loads(self.decode(raw))
    except json.JSONDecodeError as e:
      raise BadRow(f"invalid JSON: {e}") from None
    if not isinstance(row, dict):
      raise BadRow("a JSON line must be an object")
    return row


class Parquet(Columnar):
  """Parquet files; a record is one row, its number the row index (from 1)."""
  name = "parquet"

  @classmethod
  def records(cls, f):
    import pyarrow.parquet as pq
    table = pq.read_table(io.BytesIO(f.read()))
    for number_, row in enumerate(table.to_pylist(), start=1):
      yield number_, json.dumps(row, default=str, sort_keys=True).encode("utf-8"), ()

  def fields(self, raw):
    return json.loads(raw.decode("utf-8"))


FORMATS = {cls.name: cls for cls in (KuaiRand, SASRec, MovieLens, Csv, JsonLines, Parquet)}


def parse_columns(text: str) -> Dict[str, str]:
  """'user=uid,item=vid' -> {"user": "uid", "item": "vid"}; unknown names rejected."""
  mapping = {}
  for pair in filter(None, (p.strip() for p in (text or "").split(","))):
    canonical, _, column = pair.partition("=")
    if canonical not in CANONICAL or not column:
      raise ValueError(f"bad --columns entry {pair!r}: use NAME=COLUMN with NAME in {CANONICAL}")
    mapping[canonical] = column
  return mapping


# -- item-feature files ----------------------------------------------------------
ML_GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western")


def item_header_of(first_line: str) -> Optional[Tuple[str, ...]]:
  """Item files with a header row (KuaiRand items, movies.csv); None for .dat / u.item."""
  if "::" in first_line or "|" in first_line.split(",")[0]:
    return None
  return tuple(c.strip() for c in next(csv.reader([first_line])))


def parse_item_row(header: Sequence[str], raw: bytes):
  """An item-file record -> (item id, {"tag", "author", "duration_s"}).

  KuaiRand items (video_id, author_id, video_duration ms, tag comma list),
  movies.csv (movieId, title, genres), movies.dat (`::`) or ml-100k u.item
  (`|`, genre flags). The first tag or genre is the tag feature. Files that are
  not UTF-8 (ml-1m, ml-100k) are read as Latin-1.
  """
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text = raw.decode("latin-1")
  if not text.strip():
    raise BadRow("empty line")
  if header and "movieId" in header:
    f = split_csv(text, header)
    return identifier(f, "movieId"), _item(f.get("genres", "").split("|"), None, None)
  if header:
    f = split_csv(text, header)
    duration_ms = number(f, "video_duration", 0.0, minimum=0)
    return identifier(f, "video_id"), _item(
        (f.get("tag") or "").split(","), f.get("author_id"), duration_ms / 1000.0 or None)
  if "::" in text:
    f = split_csv(text, ("movieId", "title", "genres"), sep="::")
    return identifier(f, "movieId"), _item(f["genres"].split("|"), None, None)
  parts = text.split("|")
  if len(parts) != 5 + len(ML_GENRES_100K):
    raise BadRow(f"expected {5 + len(ML_GENRES_100K)} fields, got {len(parts)}")
  genres = [g for g, flag in zip(ML_GENRES_100K, parts[5:]) if flag.strip() == "1"]
  return identifier({"id": parts[0]}, "id"), _item(genres, None, None)


def _item(tags, author, duration_s):
  tags = [t.strip() for t in tags if t.strip() and t.strip() != "(no genres listed)"]
  return {"tag": tags[0] if tags else None, "author": (author or "").strip() or None,
          "duration_s": duration_s}


def add_format_flags(parser) -> None:
  """The flags that say how to read a log, shared by the build job and the online trainer."""
  parser.add_argument("--format", choices=sorted(FORMATS), default="kuairand",
                      help="input format of the log")
  parser.add_argument("--item_features", default=None,
                      help="optional glob of the item-feature CSV (video_id, author_id, "
                           "video_duration, tag)")
  parser.add_argument("--min_rating", type=float, default=None,
                      help="movielens, or a mapped rating column: ratings below are "
                           "filtered out (default: every rating is positive)")
  parser.add_argument("--columns", default=None,
                      help="csv/jsonl/parquet: NAME=COLUMN pairs, NAME in "
                           f"{', '.join(CANONICAL)}; user, item, time required. "
                           "Units: time an integer, *_s seconds, is_* 0/1")
  parser.add_argument("--positive_column", default=None,
                      help="csv/jsonl/parquet: only rows where this column is non-zero "
                           "are positive (default: every row)")


def format_options(flags) -> Dict:
  """The parser options of add_format_flags' parsed `flags` (ParseEvents' **options)."""
  options = {"min_rating": flags.min_rating, "positive_column": flags.positive_column}
  if issubclass(FORMATS[flags.format], Columnar):
    options["columns"] = parse_columns(flags.columns)
  return options
