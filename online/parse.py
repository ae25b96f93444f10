"""One micro-batch of landed log files through the build job's Beam transforms.

ReadRecords -> ParseEvents (dead letters, positive filter) exactly as in
`beam_pipelines.build`, on any runner (DirectRunner locally). The job writes
into `out_dir`: events.jsonl (accepted events), dead_letter.jsonl, items.jsonl
(item-file rows of the items this batch mentions) and counts.json (per file:
rows_in = rows_accepted + rows_rejected + rows_filtered).
"""

import dataclasses
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
  dead_letters: List[Dict]
  item_features: Dict[str, Dict]     # raw item id -> {"tag", "author", "duration_s"}
  counts: Dict[str, Dict[str, int]]  # path -> {rows_in, rows_accepted, ...}


def _write_outputs(_, out_dir, paths, events, dead, items, per_file):
  counts = {p: {c: 0 for c in COUNTS} for p in paths}
  for (path, name), n in per_file:
    counts[path][name] = n
  T.write_text(f"{out_dir}/events.jsonl", "".join(json.dumps(e) + "\n" for e in events))
  T.write_text(f"{out_dir}/dead_letter.jsonl", T.dead_letters_jsonl(dead))
  T.write_text(f"{out_dir}/items.jsonl", "".join(json.dumps(kv) + "\n" for kv in items))
  T.write_text(f"{out_dir}/counts.json", json.dumps(counts, sort_keys=True))


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
  counts = (per_file | "AllCounts" >> beam.Flatten() | "Sum" >> beam.CombinePerKey(sum)
            | "CountList" >> beam.combiners.ToList())
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
  as_list = lambda name, pcoll: beam.pvalue.AsSingleton(
      pcoll | f"{name}List" >> beam.combiners.ToList())
  (p | "Once" >> beam.Create([None])
     | "Write" >> beam.Map(_write_outputs, out_dir, list(paths), as_list("Events", parsed.events),
                           as_list("Dead", parsed[T.DEAD_LETTER]), as_list("ItemRows", items),
                           beam.pvalue.AsSingleton(counts)))


def parse_files(paths: Sequence[str], format_name: str, out_dir: str,
                item_features: Optional[str] = None, beam_args: Sequence[str] = (),
                **format_options) -> ParsedBatch:
  """Runs the job (DirectRunner unless `beam_args` say otherwise) and reads its outputs."""
  options = PipelineOptions(["--runner=DirectRunner", *beam_args])
  with beam.Pipeline(options=options) as p:
    add_parse_job(p, paths, format_name, out_dir, item_features, **format_options)
  read_lines = lambda name: [json.loads(l) for l in open(os.path.join(out_dir, name)) if l.strip()]
  events = read_lines("events.jsonl")
  for e in events:
    e["order"] = tuple(e["order"])
  with open(os.path.join(out_dir, "counts.json")) as f:
    counts = json.load(f)
  return ParsedBatch(events, read_lines("dead_letter.jsonl"),
                     {item: side for item, side in read_lines("items.jsonl")}, counts)
