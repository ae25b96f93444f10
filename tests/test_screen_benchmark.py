"""benchmarks.screen as a user runs it: a variant trained and measured on the valid split, and
a run trained elsewhere measured the same way as a reference."""

import json

import numpy as np

import cli
from beam_pipelines import build
from benchmarks import screen


def test_screen_trains_a_variant_and_evaluates_a_reference_alike(tmp_path):
  rng = np.random.default_rng(1)
  log = tmp_path / "tiny.txt"  # sasrec format: 50 users, 4-9 events each
  log.write_text("".join(f"{u} {i}\n" for u in range(50) for i in rng.integers(1, 60, rng.integers(4, 10))))
  data = tmp_path / "data"
  build.run(["--runner=DirectRunner", f"--input={log}", "--format=sasrec", f"--output_dir={data}",
             "--max_len=16"])
  tiny = {"d_model": 16, "num_heads": 1, "num_layers": 1, "ffn_dim": 16, "max_len": 16,
          "compression_windows": [8], "num_query_tokens": 2}
  flags = [f"--data_dir={data}", f"--eval_dir={data}", f"--work_dir={tmp_path / 'work'}",
           f"--base_overrides={json.dumps(tiny)}", "--train_seconds=0", "--max_epochs=1",
           "--steps_per_epoch=2", "--validation_steps=1", "--num_negatives=10"]
  out = tmp_path / "screen.json"
  cli.run_in_process("benchmarks.screen", *flags, f"--output={out}",
                     '--variant=k1={"batch_size": 16, "config_overrides": {"num_query_tokens": 1}}')
  result = json.loads(out.read_text())
  assert set(result["variants"]) == {"k1"} and result["split"] == "valid"
  [k1] = result["variants"]["k1"]["runs"]
  assert k1["steps"] == 2 and '"num_query_tokens": 1' in k1["command"]
  assert k1["valid"]["examples"] == 50 and 0 <= k1["valid_sampled"]["hr@10"] <= 1
  assert result["variants"]["k1"]["summary"]["hr@100"]["median"] == k1["valid"]["hr@100"]
  # The same run as a reference (in-process, not trained again): the same protocol, the same numbers.
  again = tmp_path / "references.json"
  screen.main([*flags, f"--reference=k1={tmp_path / 'work' / 'k1-0'}", f"--output={again}",
               "--popularity_prior=0,1000"])
  reference = json.loads(again.read_text())["references"]["k1"]
  assert reference["valid"] == k1["valid"] and reference["valid_sampled"] == k1["valid_sampled"]
  # A prior of 0 changes nothing; a huge one ranks by popularity as most popular does, the
  # model only breaking its ties (which count against the target in most popular's ranks).
  prior = reference["popularity_prior"]
  assert prior["0.0"]["valid"] == k1["valid"] and prior["0.0"]["valid_sampled"] == k1["valid_sampled"]
  from tfkf import evaluate
  popular = evaluate.evaluate(evaluate.popularity_scorer(str(data)), str(data), "valid", 16)
  by_popularity = prior["1000.0"]["valid"]
  assert by_popularity != k1["valid"]
  assert all(by_popularity[f"hr@{k}"] >= popular[f"hr@{k}"] for k in (10, 50))
