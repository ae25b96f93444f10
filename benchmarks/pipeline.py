"""make bench-pipeline: build-job throughput, Beam beside a plain pandas script.

Generates a synthetic KuaiRand-style log of about --events rows, then times
(wall clock, process start included) beam_pipelines.build on DirectRunner with
2 worker processes and benchmarks.pandas_build on the same file. Each variant
runs --repeats times, interleaved; the median is reported.

  python -m benchmarks.pipeline --events 1000000 --repeats 1
"""

import argparse
import json
import os
import statistics
import tempfile

from benchmarks import common

EVENTS_PER_USER = 50  # synthetic default: 20..80 events per user


def run(args) -> dict:
  work = tempfile.mkdtemp(prefix="bench-pipeline-")
  log = os.path.join(work, "log.csv")
  users = max(1, args.events // EVENTS_PER_USER)
  common.timed_module("beam_pipelines.synthetic", f"--users={users}", f"--items={args.items}",
                      f"--seed={args.seed}", f"--output={log}")
  with open(log) as f:
    rows_in = sum(1 for _ in f) - 1
  beam_s, pandas_s = [], []
  for i in range(args.repeats):
    out = os.path.join(work, f"beam{i}")
    beam_s.append(common.timed_module(
        "beam_pipelines.build", "--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing", f"--input={log}", "--format=kuairand",
        f"--output_dir={out}", f"--max_len={args.max_len}"))
    pandas_s.append(common.timed_module("benchmarks.pandas_build", f"--input={log}",
                                        f"--output_dir={os.path.join(work, f'pandas{i}')}",
                                        f"--max_len={args.max_len}"))
  with open(os.path.join(work, "beam0", "metadata.json")) as f:
    meta = json.load(f)
  beam, pandas = statistics.median(beam_s), statistics.median(pandas_s)
  examples = sum(s["examples"] for s in meta["splits"].values())
  return {
      "seed": args.seed, "rows_in": rows_in, "users": users, "max_len": args.max_len,
      "examples": examples, "repeats": args.repeats,
      "versions": common.versions("apache-beam", "tensorflow", "pandas"),
      "beam_multi_processing_2_workers": {"wall_s": beam_s, "median_s": beam,
                                          "events_per_s": rows_in / beam},
      "pandas_single_process": {"wall_s": pandas_s, "median_s": pandas,
                                "events_per_s": rows_in / pandas},
      "beam_over_pandas_throughput": pandas / beam,
      "target_events_per_s": 20000,
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--events", type=int, default=1_000_000)
  p.add_argument("--items", type=int, default=20_000)
  p.add_argument("--max_len", type=int, default=256)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--seed", type=int, default=11)
  p.add_argument("--output", default=None, help="default: benchmarks/results/pipeline.json")
  args = p.parse_args(argv)
  print(common.write("pipeline", run(args), args.output))


if __name__ == "__main__":
  main()
