"""The build job on the real data sets in ../shared/data: exact counts."""

import json
import os

import pytest

from beam_pipelines import build

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
pytestmark = pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is not beside the checkout")

# Counts only: cap the examples so the job stays fast; users, items and rows are unaffected.
FAST = ["--runner=DirectRunner", "--max_len=8", "--max_examples_per_user=1", "--num_shards=1"]


def _counts(tmp_path, *flags):
  build.run(FAST + [f"--output_dir={tmp_path}", *flags])
  with open(tmp_path / "metadata.json") as f:
    return json.load(f)["counts"]


def test_sasrec_games(tmp_path):
  c = _counts(tmp_path, f"--input={SHARED}/sasrec_games/Video.txt", "--format=sasrec")
  assert (c["users"], c["items"], c["rows_accepted"], c["rows_rejected"]) == (31013, 23715, 287107, 0)


def test_movielens_latest_small(tmp_path):
  d = f"{SHARED}/movielens_latest_small"
  c = _counts(tmp_path, f"--input={d}/ratings.csv", f"--item_features={d}/movies.csv",
              "--format=movielens")
  assert (c["users"], c["items"], c["rows_accepted"], c["rows_rejected"]) == (610, 9724, 100836, 0)
