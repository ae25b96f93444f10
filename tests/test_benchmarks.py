"""Smoke tests: every benchmark entry point runs on tiny inputs and the report renders."""

import json

import numpy as np
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


def test_cost_benchmark(tmp_path):
  out = tmp_path / "cost.json"
  cli.run("benchmarks.train_cost", "--preset=small", "--lengths=64", "--compressed_len=256",
          "--batch_size=2", "--every_event_targets=96", "--rounds=2", "--repeats=1", "--calls=2",
          f"--output={out}")
  result = json.loads(out.read_text())
  variants = result["variants"]
  assert set(variants) == {"64 plain", "256 compressed"}
  compressed = variants["256 compressed"]
  assert compressed["sequence_tokens"] == 2 + 5 + 48 + json.loads(result["config"])["num_query_tokens"]
  assert variants["64 plain"]["train_vs_64_plain"] == {"median": 1, "ci95": [1, 1]}
  assert compressed["train_step_s"] > 0 and len(compressed["modes"]["last"]["step_s_rounds"]) == 2
  assert compressed["flops"]["compressor"] > 0 == variants["64 plain"]["flops"]["compressor"]
  assert compressed["flops_train_vs_64_plain"] > 1 and compressed["infer_one_user_ms"] > 0
  every = compressed["modes"]["every_event"]
  assert every["targets_per_step"] == 2 * 48 and compressed["modes"]["last"]["targets_per_step"] == 2
  assert variants["64 plain"]["modes"]["every_event"]["targets_per_step"] == 64  # 96 // 64 histories
  assert every["targets_per_s"] == pytest.approx(every["targets_per_step"] / every["train_step_s"])
  from benchmarks.report import plot_cost, render
  text = render([result])
  assert text.index("| 64 plain") < text.index("| 256 compressed") and "1.1×" in text
  assert "| variant | last: targets/s | last: cost/target | every_event: histories × targets |" in text
  assert "| 256 compressed |" in text and "| 2 × 48 |" in text
  plot_cost(result, str(tmp_path / "cost.png"))
  assert (tmp_path / "cost.png").stat().st_size > 0


def test_ablation_benchmark(tmp_path):
  out = tmp_path / "ablation.json"
  cli.run("benchmarks.ablation", "--datasets=synthetic", "--users=60", "--items=300",
          "--min_events=10", "--max_events=30", "--build_len=8", "--base_len=8", "--max_lens=8",
          "--query_tokens=2", "--base_query_tokens=2", "--layers=1", "--base_layers=1",
          "--compressed_len=8", "--compression_windows=2,2", "--epochs=1", "--steps=2",
          "--batch_size=8", "--parallel=1", f"--cache_dir={tmp_path / 'cache'}", f"--output={out}")
  result = json.loads(out.read_text())
  axes = result["datasets"]["synthetic"]["axes"]
  assert set(axes) == {"max_len", "num_query_tokens", "num_layers", "compression"}
  # every_event (the default): each point trains on chunks of its own uncompressed latest events.
  assert result["budget"]["training_targets"] == "every_event"
  assert set(result["datasets"]["synthetic"]["train_builds"]) == {"8", "4"}
  base = axes["max_len"]["8"]
  # The base point is trained once and shared by every axis.
  assert base == axes["num_layers"]["1"] == axes["num_query_tokens"]["2"] == axes["compression"]["off"]
  on = axes["compression"]["on"]
  assert (base["sequence_tokens"], on["sequence_tokens"]) == (8 + 2, 2 + 4 + 2)
  assert on["params_transformer"] > base["params_transformer"] > 0  # the compressor's block
  for v in (base, on):
    assert 0 <= v["median_val_in_batch_accuracy"] <= 1
    assert v["median_hr@50"] <= v["median_hr@100"] <= v["median_hr@500"]
  from benchmarks.report import plot_ablation, render
  text = render([result])
  assert "### synthetic" in text and "| compression | on |" in text
  assert "Trends beside the paper's (synthetic" in text and "- num_layers: paper" in text
  plot_ablation(result, str(tmp_path / "ablation.png"))
  assert (tmp_path / "ablation.png").stat().st_size > 0
  # A budget check (--compare_to) sets its points beside the earlier run's: here, itself.
  from benchmarks.ablation import earlier_points
  check = {**result, "benchmark": "ablation_budget", "compared_to": earlier_points(result, result)}
  acc = f"{on['median_val_in_batch_accuracy']:.3f}"
  assert f"| compression | on | {acc} | {acc} | 0.445 |" in render([check])
  with pytest.raises(SystemExit, match="no synthetic point num_layers=5"):
    earlier_points(result, {"datasets": {"synthetic": {"axes": {"num_layers": {"5": {}}}}}})
  from benchmarks.ablation import PAPER_WINDOWS, latest_events
  from tfkf.config import PRESETS
  from tfkf.features import COMPRESSION_WINDOWS
  assert PAPER_WINDOWS == COMPRESSION_WINDOWS  # the copy the benchmark's default uses
  for point in (base["config"], on["config"]):  # its TensorFlow-free copy of num_latest_events
    assert latest_events(point) == PRESETS["small"].replace(
        **{**point, "compression_windows": tuple(point["compression_windows"])}).num_latest_events


def test_serving_benchmark(trained, tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  (work / "data").symlink_to(trained["data"])  # the benchmark reuses a built and trained run (read only)
  (work / "run").symlink_to(trained["run"])
  out = tmp_path / "serving.json"
  cli.run_in_process("benchmarks.serving", f"--work_dir={work}", "--catalogs=2000", "--indexes=scann",
                     "--batching=off", "--concurrency=2", "--seconds=1", "--users=8", "--top_k=10",
                     "--rounds=2", "--round_seconds=1", f"--output={out}")
  result = json.loads(out.read_text())
  assert result["command"].startswith(f"python -m benchmarks.serving --work_dir={work} --catalogs=2000 ")
  scann = result["results"]["2000 items"]["scann"]  # the trained items, then synthetic ones
  for run in (scann["batching_off"]["2"], scann["grpc_batching_off"]["2"],  # wrk, grpc.aio
              scann["batching_off_intra_op_1"]["2"]):  # --tensorflow_intra_op_parallelism=1
    assert run["errors"] == 0 and run["requests"] > 0 and run["p99_ms"] >= run["p50_ms"]
    assert 0 < run["server_handler_mean_ms"] < run["mean_ms"]
  assert scann["floor_intra_op_1"]["requests"] > 0  # measured in a process on one intra-op thread
  wrk_run = scann["batching_off"]["2"]
  assert wrk_run["distribution_ms"]["1"] <= wrk_run["p50_ms"] <= wrk_run["distribution_ms"]["99.9"]
  interleaved = scann["interleaved_c1"]  # floor, REST (wrk and Python), gRPC, bare REST and gRPC in turn
  for path in ("floor", "floor_after_idle", "rest", "rest_python", "grpc", "rest_bare", "grpc_bare"):
    assert interleaved[path]["errors"] == 0 < interleaved[path]["requests"]
    assert len(interleaved[path]["p50_ms_per_round"]) == interleaved["rounds"] == 2
  per_round = np.array(interleaved["rest"]["p50_ms_per_round"]) / interleaved["floor"]["p50_ms_per_round"]
  assert interleaved["rest_overhead_median"] == pytest.approx(np.median(per_round) - 1)
  low, high = interleaved["rest_overhead_ci95"]  # bootstrap interval of the median over rounds
  assert per_round.min() - 1 <= low <= interleaved["rest_overhead_median"] <= high <= per_round.max() - 1
  assert interleaved["grpc_overhead_after_idle_median"] == np.median(
      interleaved["grpc_p50_over_floor_after_idle_per_round"]) - 1
  ours_over_bare = np.array(interleaved["grpc"]["p50_ms_per_round"]) / interleaved["grpc_bare"]["p50_ms_per_round"]
  assert interleaved["grpc_over_bare_median"] == pytest.approx(np.median(ours_over_bare) - 1)
  from benchmarks.report import render
  text = render([result])
  assert "### 2000 items" in text and "gRPC, batching off | 2 |" in text
  assert f"bare grpcio {interleaved['grpc_bare_overhead_median']:+.0%}" in text
  assert f"over the bare server's: REST {interleaved['rest_over_bare_median']:+.0%}" in text


def test_scale_benchmark(trained, tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  (work / "data").symlink_to(trained["data"])  # bench-serving's cache: the shared run (read only)
  (work / "run").symlink_to(trained["run"])
  out = tmp_path / "scale.json"
  cli.run_in_process("benchmarks.scale", f"--work_dir={work}", "--catalogs=3000", "--concurrency=2",
                     "--seconds=1", "--users=8", "--recall_users=4", "--top_k=10",
                     "--after_swap_s=0.5", f"--output={out}")
  result = json.loads(out.read_text())
  assert result["command"] == f"python -m benchmarks.scale --work_dir={work} --catalogs=3000 " \
      f"--concurrency=2 --seconds=1 --users=8 --recall_users=4 --top_k=10 --after_swap_s=0.5 --output={out}"
  [row] = result["sizes"]
  assert row["items"] == 3000 and row["saved_model_bytes"] > 3000 * 64 * 4 > 0
  assert row["recall@10"] >= 0.95  # this small a catalog: every leaf searched, then re-scored
  assert row["server_rss_bytes"] > 100 * 2**20 and row["refresh"]["server_peak_rss_bytes"] > 0
  wrk_run = row["latency"]["2"]
  assert wrk_run["errors"] == 0 < wrk_run["requests"] and wrk_run["p99_ms"] >= wrk_run["p50_ms"]
  refresh = row["refresh"]
  assert refresh["failed"] == 0 < refresh["calls"], refresh["failures"]
  assert 0 < row["swap_s"] < row["refresh_s"] == pytest.approx(row["export_s"] + row["swap_s"])
  assert result["growth"] == {}  # one size: no slope
  split = row["split"]  # the tower holds an item table of the catalog's size; the index keeps v1
  assert split["user_tower_bytes"] > 3000 * 64 * 4 and split["item_index_bytes"] > 3000 * 64 * 4
  for swapped in ("tower_refresh", "index_refresh"):
    assert split[swapped]["failed"] == 0 < split[swapped]["calls"], split[swapped]
  assert split["index_versions"] == [1] and split["latency_c1"]["p99_ms"] >= split["latency_c1"]["p50_ms"] > 0
  assert 0 < split["index_swap_s"] < split["index_refresh_s"] == pytest.approx(
      split["item_index_export_s"] + split["index_swap_s"])
  from benchmarks.report import plot_scale, render
  text = render([result])
  assert "## Catalog scale" in text and "| 3,000 |" in text and f"0 of {refresh['calls']:,} |" in text
  assert "the next version is version 1's files" in text  # how its refresh export was had
  earlier = render([{**result, "sizes": [{**row, "refresh_export_s": row["export_s"]}]}])
  assert "the next version exported again" in earlier  # results of before the hard links
  assert "two servables" in text and (f"0 of {split['tower_refresh']['calls']:,}, "
                                      f"0 of {split['index_refresh']['calls']:,} | [1] |") in text
  plot_scale(result, str(tmp_path / "scale.png"), landed_to_served={3000: 12.5, 30000: 20.0})
  assert (tmp_path / "scale.png").stat().st_size > 0
  # A size the machine could not hold is a row that says why, not a gap.
  short = render([{**result, "not_measured": [{"items": 10**7, "reason": "killed by the OOM killer"}]}])
  assert "| 10,000,000 | not measured: killed by the OOM killer |" in short


def test_scale_growth_is_the_log_log_slope_of_each_cost():
  from benchmarks.scale import growth
  rows = [{"items": n, "export_s": n / 1e5, "saved_model_bytes": 64 * n, "server_rss_bytes": 2**28,
           "swap_s": (n / 1e6) ** 2, "latency": {"1": {"p99_ms": 5 * n ** 0.5}}}
          for n in (10**6, 3 * 10**6, 10**7)]
  slopes = growth(rows)
  assert slopes == pytest.approx({"export_s": 1, "saved_model_bytes": 1, "server_rss_bytes": 0,
                                  "swap_s": 2, "p99_ms_c1": 0.5}, abs=1e-9)
  from benchmarks.report import _growth_word
  assert [_growth_word(slopes[k]) for k in ("server_rss_bytes", "p99_ms_c1", "export_s", "swap_s")] == \
      ["flat", "sublinear", "linear", "superlinear"]


def test_interests_benchmark(trained, tmp_path):
  out = tmp_path / "interests.json"
  cli.run_in_process("benchmarks.interests", f"--data_dir={trained['data']}",
                     f"--model_dir={trained['run']}", "--name=synthetic", "--split=valid",
                     "--max_examples=40", "--top_k=20", f"--output={out}")
  result = json.loads(out.read_text())
  d = result["datasets"]["synthetic"]
  assert d["examples"] == 40 and d["k"] == len(d["target_wins"])
  assert np.isclose(sum(d["target_wins"]), 1.0) and np.isclose(sum(d["top_k_from_interest"]), 20)
  from benchmarks.report import render
  text = render([result])
  assert "## Multi-interest use (maxsim over k interests): synthetic" in text
  assert "| wins the target |" in text


def test_quality_benchmark(tmp_path):
  rng = np.random.default_rng(0)
  log = tmp_path / "tiny.txt"  # sasrec format: 60 users, 4-9 events each, line order is time
  log.write_text("".join(f"{u} {i}\n" for u in range(60) for i in rng.integers(1, 80, rng.integers(4, 10))))
  out = tmp_path / "quality.json"
  flags = ["--datasets=games", f"--override_input=games={log}", f"--work_dir={tmp_path / 'work'}",
           "--models=kuaiformer", "--max_len=16",
           '--kuaiformer_overrides={"d_model": 16, "num_heads": 1, "num_layers": 1, '
           '"ffn_dim": 16, "compression_windows": [8], "num_query_tokens": 2}',
           "--max_epochs=1", "--steps_per_epoch=2", "--validation_steps=1",
           "--train_seconds=0", "--kuaiformer_batch_size=16", "--num_negatives=10",
           "--kuaiformer_select_by=hr@100"]
  cli.run_in_process("benchmarks.quality", *flags, f"--output={out}")
  result = json.loads(out.read_text())
  models = result["datasets"]["games"]["models"]
  assert set(models) == {"most_popular", "item_knn", "kuaiformer"}
  trained = models["kuaiformer"]
  assert trained["steps"] == 2 and trained["params"] > 0 and trained["config"]["max_len"] == 16
  # every_event training on the chunk build (chunks of its 16 - 8 uncompressed latest events)
  assert trained["train_data"] == "chunks8" and trained["config"]["training_targets"] == "every_event"
  assert result["datasets"]["games"]["builds"]["chunks8"]["splits"]["train"]["examples"] < \
      result["datasets"]["games"]["builds"]["prefix"]["splits"]["train"]["examples"]
  [point] = trained["learning_curve"]["points"]
  assert point["epoch"] == 1 and point["step"] == 2 and 0 <= point["hr@100"] <= 1
  assert "--curve_num_negatives=10" in trained["command"]  # the curve's sampled protocol is the table's
  assert 0 <= point["sampled_hr@10"] <= 1
  assert (trained["learning_curve"]["selected_by"], trained["learning_curve"]["selected_step"]) == ("hr@100", 2)
  assert trained["final_val_loss"] is None  # the curve selects: no validation-loss pass
  # One fixed example set for every model: the prefix build's test split, one per user.
  assert {m["full"]["examples"] for m in models.values()} == {m["sampled"]["examples"] for m in models.values()} == {60}
  assert all(0 <= m["sampled"]["hr@10"] <= 1 for m in models.values())
  for m in models.values():  # 95% intervals over the 60 test users
    low, high = m["intervals"]["full"]["hr@50"]
    assert low <= m["full"]["hr@50"] <= high
  minus = result["datasets"]["games"]["kuaiformer_minus"]
  assert set(minus) == {"most_popular", "item_knn"}
  paired = minus["item_knn"]["full"]["hr@50"]
  assert np.isclose(paired["difference"], trained["full"]["hr@50"] - models["item_knn"]["full"]["hr@50"])
  assert paired["interval"][0] <= paired["difference"] <= paired["interval"][1]
  # The popularity buckets partition the test examples: their weighted hit rates are the totals.
  popularity = result["datasets"]["games"]["by_target_popularity"]
  assert sum(popularity["examples"]) == 60
  for name, m in models.items():
    for protocol, metric, key in (("sampled", "hr@10", "sampled_hr@10"), ("full", "hr@100", "hr@100")):
      rates = popularity["models"][name][key]
      weighted = sum(n * (r or 0) for n, r in zip(popularity["examples"], rates)) / 60
      assert np.isclose(weighted, m[protocol][metric]), (name, key)
  from benchmarks.report import _curve_metric_name, render
  assert [_curve_metric_name(m) for m in ("hr@100", "sampled_hr@10")] == ["HR@100", "sampled HR@10"]
  text = render([result])
  assert "| target's train count | test examples | Most popular | ItemKNN (cosine) | KuaiFormer |" in text
  assert "| SASRec (paper) | 0.7410 | 0.5360 |" in text and "| KuaiFormer |" in text
  assert "Retrieval quality against baselines: SASRec Amazon Games" in text
  # The cpu preset's loss and augmentation, read from the run's config.
  assert ("auxiliary SASRec loss weight 1, history events replaced by random items at rate 0.3, "
          "whole history events dropped at rate 0.1, no bias in the candidate projection, each "
          "user's first event a target too (of the empty history), item side features "
          "(SASRec Amazon Games: none)." in text)  # a sasrec log has none
  assert "![learning curves](benchmarks/plots/learning_curve_games.png)" in text
  assert "KuaiFormer minus each model, paired" in text and "95% bootstrap interval" in text
  assert ("lowest validation loss, `tfkf.train`'s EarlyStopping; KuaiFormer keeps its learning "
          "curve's best point by valid HR@100 on 2000 examples, `tfkf.train --select_by=hr@100`, "
          "without a validation-loss pass") in text
  without = {**result, "datasets": {"games": {**result["datasets"]["games"], "kuaiformer_minus": {},
             "models": {n: m for n, m in models.items() if n != "kuaiformer"}}}}
  assert "KuaiFormer keeps" not in render([without])  # a run without KuaiFormer says nothing of it
  assert f"Weights kept (the learning curve's best point): KuaiFormer step 2 of 2 (valid HR@100 {point['hr@100']:.4f})" in text
  # --reuse: the saved run evaluated again, not trained: the same ranks, the same record.
  again = tmp_path / "again.json"
  cli.run_in_process("benchmarks.quality", *flags, "--reuse=kuaiformer", f"--reuse_from={out}",
                     f"--output={again}")
  reused = json.loads(again.read_text())["datasets"]["games"]["models"]["kuaiformer"]
  assert reused["full"] == trained["full"] and reused["command"] == trained["command"]
  assert reused["reused_from"] == {"path": str(out), "date": result["date"]}
  assert "not trained again: KuaiFormer" in render([json.loads(again.read_text())])


def test_quality_benchmark_takes_a_users_own_log():
  from benchmarks import quality
  args = quality.parse_args(["--input=/logs/clicks-*.csv", "--format=kuairand",
                             "--item_features=/logs/items.csv", "--build_flag=--min_item_count=5"])
  assert args.datasets == ["clicks-"]
  spec = quality.DATASETS["clicks-"]
  assert (spec["input"], spec["format"], spec["item_features"]) == ("/logs/clicks-*.csv", "kuairand",
                                                                    "/logs/items.csv")
  assert quality.build_flags("chunks48", spec) == ["--layout=chunks", "--chunk_len=48"]
  assert "--min_item_count=5" in spec["build_flags"]


def test_median_ci95_narrows_with_more_rounds_and_covers_the_median():
  from benchmarks.common import median_ci95
  rng = np.random.default_rng(1)
  few, many = rng.normal(1.2, 0.1, 8), rng.normal(1.2, 0.1, 128)
  for values in (few, many):
    low, high = median_ci95(values)
    assert low < np.median(values) < high
  assert np.diff(median_ci95(many)) < np.diff(median_ci95(few))
  assert median_ci95([1.0] * 5) == [1.0, 1.0]
