"""Builds bucketed-sequence TFRecords from raw interaction logs.

  python -m beam_pipelines.build --runner=DirectRunner \
      --input='data/log*.csv' --format=kuairand --item_features=data/items.csv \
      --output_dir=data/built

Takes every standard Beam pipeline option, so the same graph runs on
DataflowRunner, FlinkRunner or SparkRunner. Output (see docs/data_format.md):
train/ valid/ test/ TFRecord shards, catalog.csv, vocab/*.txt, metadata.json,
dead_letter/, stats.txt.
"""

import argparse
import os
import sys
from typing import Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import (PipelineOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from beam_pipelines import formats, sinks
from beam_pipelines import transforms as T
from tfkf import data_files, features


LAYOUT_TARGETS, LAYOUT_CHUNKS = "targets", "chunks"
# Temporary files of the file sinks; deleted when the job has written everything.
TEMP_DIR = ".beam-temp"
# Runners whose workers run in this process or its children, importing this checkout.
LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "InteractiveRunner", "FnApiRunner")
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "pyproject.toml")


class BuildOptions(PipelineOptions):
  """Flags of the build job (every other flag is a standard Beam option)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument("--input", help="glob of log files (required)")
    formats.add_format_flags(parser)
    parser.add_argument("--output_dir", help="where outputs go (required; any Beam filesystem)")
    parser.add_argument("--max_len", type=int, default=features.MAX_LEN,
                        help="events of history kept per example")
    parser.add_argument("--min_item_count", type=int, default=1,
                        help="items seen fewer times map to OOV and are never targets")
    parser.add_argument("--stride", type=int, default=1,
                        help="keep every stride-th training target per user, latest first")
    parser.add_argument("--layout", choices=[LAYOUT_TARGETS, LAYOUT_CHUNKS], default=LAYOUT_TARGETS,
                        help="targets: one training example per target; chunks: one per "
                             "--chunk_len targets, for training_targets=every_event "
                             "(docs/data_format.md, Layouts)")
    parser.add_argument("--chunk_len", type=int, default=features.CHUNK_LEN,
                        help="--layout=chunks: training targets per example; at most the "
                             "model's uncompressed latest events")
    parser.add_argument("--max_examples_per_user", type=int, default=10**9,
                        help="cap on training examples per user (latest kept)")
    parser.add_argument("--split", choices=["leave_one_out", "last_events", "time"],
                        default="leave_one_out",
                        help="leave_one_out: per user last event test, second-to-last valid; "
                             "last_events: per user last --holdout_events test, the "
                             "--holdout_events before them valid; "
                             "time: by --split_time / --valid_time")
    parser.add_argument("--holdout_events", type=int, default=10,
                        help="with --split=last_events: test (and valid) targets per user")
    parser.add_argument("--split_time", type=int, default=None,
                        help="with --split=time: targets at or after this time are test")
    parser.add_argument("--valid_time", type=int, default=None,
                        help="with --split=time: targets in [valid_time, split_time) are "
                             "valid (default: no valid split)")
    parser.add_argument("--num_shards", type=int, default=4, help="TFRecord shards per split")


def build(p: beam.Pipeline, opts: BuildOptions) -> None:
  """Adds the whole job to pipeline `p`."""
  out = opts.output_dir.rstrip("/")
  fmt = formats.FORMATS[opts.format]
  lines = p | "ReadLog" >> T.ReadRecords(opts.input, fmt.records)
  parsed = lines | "Parse" >> T.ParseEvents(opts.format, **formats.format_options(opts))
  events = parsed.events

  item_vocab = (events | "ItemIds" >> beam.Map(lambda e: e["item"])
                | "ItemVocab" >> T.BuildVocabulary(opts.min_item_count))
  item_index = item_vocab | "ItemIndex" >> beam.Map(
      lambda v: T.vocab_ids(item for item, _ in v))
  dead_letters = [parsed[T.DEAD_LETTER]]
  if opts.item_features:
    items = p | "ReadItems" >> T.ReadItemFeatures(opts.item_features)
    item_features, _ = items.items, dead_letters.append(items[T.DEAD_LETTER])
  else:
    item_features = p | "NoItemFeatures" >> beam.Create([])
  durations = (events | "Durations" >> beam.FlatMap(
      lambda e: [(e["item"], e["duration_s"])] if e["duration_s"] else [])
               | "MaxDuration" >> beam.CombinePerKey(max))

  temp = f"{out}/{TEMP_DIR}"
  examples = events | "Examples" >> T.WriteExampleShards(
      out, opts.num_shards, item_index, opts.max_len, _stride(opts), opts.max_examples_per_user,
      _split_fn(opts), chunks=opts.layout == LAYOUT_CHUNKS, temp_directory=temp)
  catalog = item_vocab | "Catalog" >> beam.Map(
      T.build_catalog, beam.pvalue.AsDict(item_features), beam.pvalue.AsDict(durations),
      beam.pvalue.AsDict(examples["training_counts"]))
  all_dead = tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
  dead_written = all_dead | "DeadLetters" >> T.WriteDeadLetters(
      f"{out}/dead_letter", opts.num_shards, temp)

  counted = {
      "rows_in": lines,
      "rows_accepted": events,
      "rows_rejected": parsed[T.DEAD_LETTER],
      "rows_filtered": parsed[T.FILTERED],
      "users": events | "Users" >> beam.Map(lambda e: e["user"]) | beam.Distinct(),
      "dead_letters_total": all_dead,
      "items": catalog | "CatalogRows" >> beam.FlatMap(lambda rows: rows),
  }
  counts = {name: pcoll | f"Count_{name}" >> T.CountGlobally(name)
            for name, pcoll in counted.items()}
  example_stats = (examples["history_lens"]
                   | "StatsPerSplit" >> beam.CombinePerKey(_HistoryStats())
                   | "StatsList" >> beam.combiners.ToList())
  side = {name: beam.pvalue.AsSingleton(c) for name, c in counts.items()}
  artifacts = (p | "Once" >> beam.Create([None])
               | "Artifacts" >> beam.FlatMap(
                   _artifacts, _flags(opts), provided_event_features(opts),
                   beam.pvalue.AsSingleton(catalog), beam.pvalue.AsSingleton(example_stats),
                   **side))
  _ = artifacts | "WriteArtifacts" >> WriteArtifacts(
      out, temp, (examples["written"], dead_written))


class WriteArtifacts(beam.PTransform):
  """(directory, file name, bytes) -> files under `out`, metadata.json last: once every
  other file, those of `written` (FileResults) included, exists, its presence marks a
  complete output. Then the file sinks' temporary directory goes."""

  def __init__(self, out: str, temp: str, written):
    super().__init__()
    self.out, self.temp, self.written = out, temp, list(written)

  def expand(self, artifacts):
    written = list(self.written)
    for directory in ("", data_files.VOCAB_DIR):
      name = directory.title() or "Root"
      written.append(
          artifacts
          | f"In{name}" >> beam.Filter(
              lambda a, d=directory: a[0] == d and a[1] != data_files.METADATA)
          | f"Name{name}" >> beam.Map(lambda a: a[1:]).with_output_types(Tuple[str, bytes])
          | f"Write{name}" >> sinks.WriteFiles(f"{self.out}/{directory}".rstrip("/"),
                                               temp_directory=self.temp))
    everything_else = beam.pvalue.AsList(tuple(written) | "Written" >> beam.Flatten())
    return (artifacts
            | "OnlyMetadata" >> beam.Filter(lambda a: a[1] == data_files.METADATA)
            | "AfterTheRest" >> beam.Map(lambda a, _: a[1:], everything_else)
            .with_output_types(Tuple[str, bytes])
            | "WriteMetadata" >> sinks.WriteFiles(self.out, temp_directory=self.temp)
            | "DeleteTemporaries" >> sinks.DeleteTemporaries(self.temp))


def provided_event_features(opts: BuildOptions):
  fmt = formats.FORMATS[opts.format]
  if issubclass(fmt, formats.Columnar):
    return fmt.provided(formats.parse_columns(opts.columns))
  return fmt.provides


def _stride(opts: BuildOptions) -> int:
  if opts.layout == LAYOUT_TARGETS:
    return opts.stride
  if opts.stride != 1:
    raise SystemExit("beam_pipelines.build: --layout=chunks spaces examples by --chunk_len; "
                     "--stride is for --layout=targets")
  if not 0 < opts.chunk_len <= opts.max_len:
    raise SystemExit(f"beam_pipelines.build: --chunk_len={opts.chunk_len} must be in "
                     f"[1, --max_len={opts.max_len}]")
  return opts.chunk_len


def _split_fn(opts: BuildOptions):
  if opts.split == "time":
    if opts.split_time is None:
      raise SystemExit("beam_pipelines.build: --split=time needs --split_time")
    return T.TimeSplit(opts.split_time, opts.valid_time)
  if opts.split == "last_events":
    return T.LastEvents(opts.holdout_events)
  return T.LeaveOneOut()


class _HistoryStats(beam.CombineFn):
  """History lengths -> {examples, mean_history_len, max_history_len}."""

  def create_accumulator(self):
    return (0, 0, 0)

  def add_input(self, acc, n: int):
    return (acc[0] + 1, acc[1] + n, max(acc[2], n))

  def merge_accumulators(self, accs):
    accs = list(accs)
    return (sum(a[0] for a in accs), sum(a[1] for a in accs), max(a[2] for a in accs))

  def extract_output(self, acc):
    return {"examples": acc[0], "mean_history_len": acc[1] / acc[0] if acc[0] else 0.0,
            "max_history_len": acc[2]}


def _flags(opts: BuildOptions) -> dict:
  names = [a.dest for a in _parser_of(BuildOptions)._actions if a.dest != "help"]
  return {n: getattr(opts, n) for n in names}


def _artifacts(_, flags, event_features, catalog, example_stats, **counts):
  """(directory, file name, bytes) of every file besides the examples and dead letters."""
  tag_vocab = T.vocab_of(r["tag"] for r in catalog)
  author_vocab = T.vocab_of(r["author"] for r in catalog)
  vocabularies = {"item": [r["item_id"] for r in catalog], "tag": tag_vocab, "author": author_vocab}
  for name, values in vocabularies.items():
    yield data_files.VOCAB_DIR, data_files.vocab_file(name), data_files.vocab_text(values).encode()
  yield "", data_files.CATALOG, T.catalog_csv(
      catalog, T.vocab_ids(tag_vocab), T.vocab_ids(author_vocab)).encode("utf-8")
  splits = {s: {"examples": 0, "mean_history_len": 0.0, "max_history_len": 0} for s in T.SPLITS}
  splits.update(dict(example_stats))
  metadata = data_files.metadata(
      flags, event_features, counts,
      {name: len(values) for name, values in vocabularies.items()}, splits)
  yield "", "stats.txt", _report(metadata).encode("utf-8")
  yield "", data_files.METADATA, data_files.metadata_json(metadata).encode("utf-8")


def _report(m: dict) -> str:
  c = m["counts"]
  lines = [f"rows_in {c['rows_in']} = accepted {c['rows_accepted']} + rejected "
           f"{c['rows_rejected']} + filtered {c['rows_filtered']}",
           f"users {c['users']}, items {c['items']}"]
  for split, s in sorted(m["splits"].items()):
    lines.append(f"{split}: {s['examples']} examples, history mean "
                 f"{s['mean_history_len']:.1f}, max {s['max_history_len']}")
  return "\n".join(lines) + "\n"


def _parser_of(*option_classes) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m beam_pipelines.build", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  for cls in option_classes:
    cls._add_argparse_args(parser.add_argument_group(cls.__name__))
  return parser


def _all_option_classes():
  seen, todo = [], [PipelineOptions]
  while todo:
    cls = todo.pop(0)
    for sub in cls.__subclasses__():
      if sub not in seen and "_add_argparse_args" in sub.__dict__:
        seen.append(sub)
      todo.append(sub)
  return [BuildOptions] + [c for c in seen if c is not BuildOptions]


def staging_flags(argv) -> list:
  """[--setup_file=<checkout>/pyproject.toml] when a remote runner's workers would otherwise
  lack tfkf and beam_pipelines: Beam builds the package's sdist (`python -m build`) and its
  workers pip-install it. Nothing when the runner is local, the job already stages code
  (--setup_file, --extra_package) or names a worker image, or tfkf runs from an installed
  package rather than a checkout (the workers' image must hold it then)."""
  options = PipelineOptions(argv)
  runner = options.view_as(StandardOptions).runner or "DirectRunner"
  setup = options.view_as(SetupOptions)
  if (runner.split(".")[-1] in LOCAL_RUNNERS or setup.setup_file or setup.extra_packages
      or options.view_as(WorkerOptions).sdk_container_image or not os.path.exists(PYPROJECT)):
    return []
  return [f"--setup_file={PYPROJECT}"]


def run(argv=None):
  """Runs the build job; returns its PipelineResult (None for --help)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv:
    _parser_of(*_all_option_classes()).print_help()
    return
  opts = PipelineOptions(argv).view_as(BuildOptions)
  missing = [f"--{n}" for n in ("input", "output_dir") if not getattr(opts, n)]
  if missing:
    raise SystemExit(f"beam_pipelines.build: missing required flag(s) {', '.join(missing)}")
  try:
    formats.format_options(opts), _split_fn(opts)
  except ValueError as e:
    raise SystemExit(f"beam_pipelines.build: {e}") from None
  p = beam.Pipeline(options=PipelineOptions(argv + staging_flags(argv)))
  build(p, opts)
  result = p.run()
  result.wait_until_finish()
  return result


if __name__ == "__main__":
  run()
