"""Smoke tests: every benchmark entry point runs on tiny inputs and the report renders."""

import json

import pytest

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


def test_train_cost_benchmark(tmp_path):
  out = tmp_path / "train_cost.json"
  cli.run("benchmarks.train_cost", "--batch_size=4", "--steps=2", "--repeats=1", f"--output={out}")
  result = json.loads(out.read_text())
  variants = result["variants"]
  assert set(variants) == {"64 plain", "256 plain", "256 compressed"}
  assert variants["256 compressed"]["sequence_tokens"] == 55 + 4
  assert variants["256 plain"]["flops_vs_64_plain"] > variants["256 compressed"]["flops_vs_64_plain"] > 1
  from benchmarks.report import render
  text = render([result])
  assert text.index("| 64 plain") < text.index("| 256 compressed") < text.index("| 256 plain")


def test_ablation_benchmark(tmp_path):
  out = tmp_path / "ablation.json"
  cli.run("benchmarks.ablation", "--values=1,2", "--seeds=0", "--users=120", "--max_len=16",
          "--epochs=1", "--steps=2", "--batch_size=16", f"--output={out}")
  result = json.loads(out.read_text())
  assert set(result["results"]) == {"1", "2"}
  assert all(0 <= v["median_val_in_batch_accuracy"] <= 1 for v in result["results"].values())
  from benchmarks.report import render
  assert "Ablation: `num_query_tokens`" in render([result])


@pytest.mark.xdist_group("trained")  # one worker builds the shared model (conftest)
def test_serving_benchmark(trained, tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  (work / "data").symlink_to(trained["data"])  # the benchmark reuses a built and trained run
  (work / "run").symlink_to(trained["run"])
  out = tmp_path / "serving.json"
  cli.run("benchmarks.serving", f"--work_dir={work}", "--catalogs=2000", "--indexes=scann",
          "--batching=off", "--concurrency=2", "--seconds=0.5", "--users=8", "--top_k=10",
          f"--output={out}")
  result = json.loads(out.read_text())
  scann = result["results"]["2000 items"]["scann"]  # 1,500 trained items + 500 synthetic ones
  for run in (scann["batching_off"]["2"], scann["grpc_batching_off"]["2"]):
    assert run["errors"] == 0 and run["requests"] > 0 and run["p99_ms"] >= run["p50_ms"]
    assert 0 < run["server_handler_mean_ms"] < run["mean_ms"]
  from benchmarks.report import render
  assert "### 2000 items" in render([result]) and "gRPC, batching off | 2 |" in render([result])

