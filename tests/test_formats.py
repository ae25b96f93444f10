"""A small golden fixture per input format, read and parsed through the Beam transforms."""

import os

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines import formats
from beam_pipelines import transforms as T

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GENERIC = {"columns": formats.parse_columns("user=uid,item=vid,time=ts,watch_time_s=play_s")}


def fixture(name):
  return os.path.join(FIXTURES, name)


def summary(e):
  return (e["user"], e["item"], e["time"], e["watch_time_s"], e["rating"], e["is_like"])


CASES = [
    # (format, file, options, expected event summaries, expected filtered count)
    ("kuairand", "kuairand_log.csv", {}, [("u1", "v1", 1649412000000, 30.0, 0.0, 1.0),
                                           ("u2", "v1", 1649415600000, 50.0, 0.0, 0.0)], 1),
    ("movielens", "ml100k_u.data", {}, [("196", "242", 881250949, 0.0, 3.0, 0.0),
                                        ("186", "302", 891717742, 0.0, 3.5, 0.0)], 0),
    ("movielens", "ml1m_ratings.dat", {"min_rating": 4}, [("1", "1193", 978300760, 0.0, 5.0, 0.0)], 1),
    ("movielens", "ml_ratings.csv", {}, [("1", "1", 964982703, 0.0, 4.0, 0.0),
                                         ("1", "3", 964981247, 0.0, 2.5, 0.0)], 0),
    ("sasrec", "sasrec.txt", {}, [("u", "1", 0, 0.0, 0.0, 0.0), ("u", "2", 0, 0.0, 0.0, 0.0),
                                  ("w", "1", 0, 0.0, 0.0, 0.0)], 0),
    ("csv", "generic.csv", {**GENERIC, "positive_column": "liked"}, [("A", "X", 5, 1.5, 0.0, 0.0)], 1),
    ("jsonl", "generic.jsonl", GENERIC, [("A", "X", 5, 1.5, 0.0, 0.0), ("A", "Y", 7, 0.5, 0.0, 0.0)], 0),
]


@pytest.mark.parametrize("fmt,name,options,expected,filtered", CASES)
def test_golden_fixture(fmt, name, options, expected, filtered):
  with BeamTestPipeline() as p:
    out = (p | T.ReadRecords(fixture(name), formats.FORMATS[fmt].records)
           | T.ParseEvents(fmt, **options))
    assert_that(out.events | beam.Map(summary), equal_to(expected), label="events")
    assert_that(out[T.FILTERED] | beam.combiners.Count.Globally(), equal_to([filtered]),
                label="filtered")
    assert_that(out[T.DEAD_LETTER], equal_to([]), label="dead letters")


def test_parquet_rows_with_a_column_mapping(tmp_path):
  path = str(tmp_path / "log.parquet")
  pq.write_table(pa.table({"uid": ["A", "B"], "vid": ["X", ""], "ts": [5, 6], "play_s": [1.5, 2.0]}), path)
  with BeamTestPipeline() as p:
    out = p | T.ReadRecords(path, formats.Parquet.records) | T.ParseEvents("parquet", **GENERIC)
    assert_that(out.events | beam.Map(summary), equal_to([("A", "X", 5, 1.5, 0.0, 0.0)]), label="ok")
    assert_that(out[T.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(2, "empty 'item'")]), label="dead")


ITEM_CASES = [
    ("kuairand_items.csv", {("v1", "7", "a9", 60.0), ("v2", None, "a8", 15.0)}),
    ("ml100k_u.item", {("242", "Comedy", None, None), ("302", "Crime", None, None)}),
    ("ml1m_movies.dat", {("1193", "Drama", None, None), ("661", "Animation", None, None)}),
    ("ml_movies.csv", {("1", "Adventure", None, None), ("3", "Comedy", None, None)}),
]


@pytest.mark.parametrize("name,expected", ITEM_CASES)
def test_item_feature_files(name, expected):
  with BeamTestPipeline() as p:
    items = p | T.ReadItemFeatures(fixture(name))
    assert_that(items.items | beam.Map(lambda kv: (kv[0], kv[1]["tag"], kv[1]["author"],
                                                   kv[1]["duration_s"])),
                equal_to(sorted(expected, key=str)), label="items")
    assert_that(items[T.DEAD_LETTER], equal_to([]), label="dead")


def test_bad_column_mapping_is_a_clear_error():
  with pytest.raises(ValueError, match="bad --columns entry 'who=uid'"):
    formats.parse_columns("who=uid,item=vid")
  with pytest.raises(ValueError, match="must map 'time'"):
    formats.Csv(("uid", "vid"), columns=formats.parse_columns("user=uid,item=vid"))
