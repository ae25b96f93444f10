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


def test_serving_benchmark(trained, tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  (work / "data").symlink_to(trained["data"])  # the benchmark reuses a built and trained run
  (work / "run").symlink_to(trained["run"])
  out = tmp_path / "serving.json"
  cli.run("benchmarks.serving", f"--work_dir={work}", "--catalogs=2000", "--indexes=scann,brute_force",
          "--batching=off", "--concurrency=1,2", "--seconds=0.5", "--users=8", "--top_k=10",
          f"--output={out}")
  result = json.loads(out.read_text())
  cell = result["results"]["2000 items"]  # 1,500 trained items padded with 500 synthetic ones
  assert cell["scann_recall_at_k"] >= 0.95
  for index in ("scann", "brute_force"):
    runs = cell[index]["batching_off"].values()
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in runs)
    assert cell[index]["grpc_batching_off"]["2"]["server_handler_mean_ms"] > 0
  from benchmarks.report import render
  assert "### 2000 items" in render([result]) and "ScaNN vs brute force" in render([result])

