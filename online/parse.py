"""One micro-batch of landed log files through the build job's Beam transforms.

ReadRecords -> ParseEvents (dead letters, positive filter) exactly as in
`beam_pipelines.build`, on any runner (DirectRunner locally). The job writes
into `out_dir`, through Beam's text sink (temporary files renamed into place
when the job commits, so a retried bundle leaves no duplicate or partial file),
JSON lines in shards: events-* (accepted events), dead_letter-*, items-*
(item-file rows of the items this batch mentions) and counts-* (per file and
count: rows_in = rows_accepted + rows_rejected + rows_filtered). No step
gathers the events into one element.
"""

import dataclasses
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import formats
from beam_pipelines import transforms as T

COUNTS = ("rows_in", "rows_accepted", "rows_rejected", "rows_filtered")


@dataclasses.dataclass
class ParsedBatch:
  events: List[Dict]                 # accepted events; "order" = (path, record number)
  dead_letters: List[Dict]           # in no particular order (T.dead_letters_jsonl sorts them)
  item_features: Dict[str, Dict]     # raw item id -> {"tag", "author", "duration_s"}
  counts: Dict[str, Dict[str, int]]  # path -> {rows_in, rows_accepted, ...}


class _WriteJsonLines(beam.PTransform):
  """Elements -> JSON lines in shards <out_dir>/<name>-SSSSS-of-NNNNN.jsonl (a Beam sink)."""

  def __init__(self, out_dir: str, name: str):
    super().__init__()
    self.prefix = os.path.join(out_dir, name)

  def expand(self, pcoll):
    return (pcoll | "Json" >> beam.Map(lambda x: json.dumps(x, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl"))


def _read_json_lines(out_dir: str, name: str) -> List:
  paths = sorted(glob.glob(os.path.join(out_dir, f"{name}-*.jsonl")))
  return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def add_parse_job(p: beam.Pipeline, paths: Sequence[str], format_name: str, out_dir: str,
                  item_features: Optional[str] = None, **format_options) -> None:
  """Adds the micro-batch job over the files `paths` to pipeline `p`."""
  fmt = formats.FORMATS[format_name]
  # One read per file: each is an exact path, never a glob that could match more.
  lines = ([p | f"Read{i}" >> T.ReadRecords(path, fmt.records) for i, path in enumerate(paths)]
           | "AllLines" >> beam.Flatten())
  parsed = lines | "Parse" >> T.ParseEvents(format_name, **format_options)
  per_file = [
      lines | "InPerFile" >> beam.Map(lambda r: ((r[0], "rows_in"), 1)),
      parsed.events | "AcceptedPerFile" >> beam.Map(lambda e: ((e["order"][0], "rows_accepted"), 1)),
      parsed[T.DEAD_LETTER] | "RejectedPerFile" >> beam.Map(lambda d: ((d["source"], "rows_rejected"), 1)),
      parsed[T.FILTERED] | "FilteredPerFile" >> beam.Map(lambda f: ((f[0], "rows_filtered"), 1)),
  ]
  counts = per_file | "AllCounts" >> beam.Flatten() | "Sum" >> beam.CombinePerKey(sum)
  if item_features:
    # Side features only of the items this batch mentions: the item table may be large.
    table = (p | "ReadItems" >> T.ReadItemFeatures(item_features)).items
    mentioned = (parsed.events | "Items" >> beam.Map(lambda e: e["item"]) | beam.Distinct()
                 | "KeyItems" >> beam.Map(lambda i: (i, None)))
    items = ({"side": table, "mentioned": mentioned} | "Join" >> beam.CoGroupByKey()
             | "Mentioned" >> beam.FlatMap(
                 lambda kv: [(kv[0], kv[1]["side"][0])] if kv[1]["side"] and kv[1]["mentioned"]
                 else []))
  else:
    items = p | "NoItems" >> beam.Create([])
  for name, pcoll in (("events", parsed.events), ("dead_letter", parsed[T.DEAD_LETTER]),
                      ("items", items), ("counts", counts)):
    _ = pcoll | f"Write_{name}" >> _WriteJsonLines(out_dir, name)


def parse_files(paths: Sequence[str], format_name: str, out_dir: str,
                item_features: Optional[str] = None, beam_args: Sequence[str] = (),
                **format_options) -> ParsedBatch:
  """Runs the job (DirectRunner unless `beam_args` say otherwise) and reads its outputs."""
  options = PipelineOptions(["--runner=DirectRunner", *beam_args])
  with beam.Pipeline(options=options) as p:
    add_parse_job(p, paths, format_name, out_dir, item_features, **format_options)
  events = _read_json_lines(out_dir, "events")
  for e in events:
    e["order"] = tuple(e["order"])
  events.sort(key=lambda e: e["order"])  # file order, whatever the shards
  counts = {path: {c: 0 for c in COUNTS} for path in paths}
  for (path, name), n in _read_json_lines(out_dir, "counts"):
    counts[path][name] = n
  return ParsedBatch(events, _read_json_lines(out_dir, "dead_letter"),
                     {item: side for item, side in _read_json_lines(out_dir, "items")}, counts)
