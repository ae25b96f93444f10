"""Smoke tests: every benchmark entry point runs on tiny inputs and the report renders."""

import json

import cli


def test_pipeline_benchmark_and_report(tmp_path):
  out = tmp_path / "pipeline.json"
  cli.run("benchmarks.pipeline", "--events=1500", "--items=200", "--max_len=16", f"--output={out}")
  result = json.loads(out.read_text())
  beam = result["beam_multi_processing_2_workers"]
  assert result["rows_in"] > 1000 and beam["events_per_s"] == result["rows_in"] / beam["median_s"]
  from benchmarks.report import render
  text = render([result])
  assert "Build pipeline throughput" in text and f"{result['rows_in']:,}" in text
