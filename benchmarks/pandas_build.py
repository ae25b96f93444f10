"""The build transform as a plain single-process pandas script (benchmark baseline).

Same input (KuaiRand CSV), same validation of numeric fields, positive filter,
vocabulary, leave-one-out examples and tf.train.Example encoding as
beam_pipelines.build; one TFRecord file per split, no dead-letter output.

  python -m benchmarks.pandas_build --input=log.csv --output_dir=out --max_len=256
"""

import argparse
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from beam_pipelines import transforms as T
from tfkf import features

NUMERIC = ("time_ms", "play_time_ms", "duration_ms", "is_click", "is_like", "is_follow",
           "is_comment", "is_forward", "long_view")


def build(input_csv: str, output_dir: str, max_len: int) -> dict:
  df = pd.read_csv(input_csv, dtype={"user_id": str, "video_id": str})
  rows_in = len(df)
  for col in NUMERIC:
    df[col] = pd.to_numeric(df[col], errors="coerce")
  valid = df[list(NUMERIC)].notna().all(axis=1) & (df[["play_time_ms", "duration_ms"]] >= 0).all(axis=1)
  valid &= df.user_id.notna() & df.video_id.notna() & (df.time_ms >= 0)
  df = df[valid]
  positive = df[(df.is_click == 1) | (df.long_view == 1)].copy()
  counts = positive.video_id.value_counts()
  vocab = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  index = {item: i + features.NUM_RESERVED_IDS for i, (item, _) in enumerate(vocab)}
  positive["watch_time_s"] = positive.play_time_ms / 1000.0
  positive["watch_ratio"] = np.where(positive.duration_ms > 0,
                                     positive.play_time_ms / positive.duration_ms.clip(lower=1), 0.0)
  positive["rating"] = 0.0
  positive["order"] = np.arange(len(positive))
  positive = positive.sort_values(["user_id", "time_ms", "order"], kind="stable")
  os.makedirs(output_dir, exist_ok=True)
  writers = {s: tf.io.TFRecordWriter(os.path.join(output_dir, f"{s}.tfrecord")) for s in T.SPLITS}
  examples = 0
  for user, group in positive.groupby("user_id", sort=True):
    enc = {"item": group.video_id.map(index).to_numpy(np.int64)}
    for name, encoding in features.EVENT_FEATURES.items():
      enc[name] = encoding.to_numpy(group[features.EVENT_RAW_INPUTS[name]].to_numpy())
    enc = {name: values.tolist() for name, values in enc.items()}
    times = group.time_ms.to_numpy(np.int64)
    splits = T.LeaveOneOut()(range(len(group)))
    for p in range(1, len(group)):
      writers[splits[p]].write(T.example_bytes(user, int(times[p]), enc, max(0, p - max_len), p))
      examples += 1
  for w in writers.values():
    w.close()
  return {"rows_in": rows_in, "rows_accepted": len(positive), "examples": examples}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--input", required=True)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--max_len", type=int, default=features.MAX_LEN)
  a = p.parse_args(argv)
  print(build(a.input, a.output_dir, a.max_len))


if __name__ == "__main__":
  main()
