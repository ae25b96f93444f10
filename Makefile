# Quickstart: `make demo`, `make test`. Both create .venv from requirements*.txt if needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: venv tools demo test clean verify-portable

# uv installs the same pinned versions as pip does, faster (32 s against 51 s for these files
# on a fresh machine): CI's `make test` starts with this install. --compile-bytecode as pip
# does: where PYTHONDONTWRITEBYTECODE is set, every process would compile TensorFlow again
# (12 s against 4 s to import it).
UV_VERSION := 0.13.9

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv==$(UV_VERSION)
	$(PY) -m uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# wrk (Debian's package), the REST load generator of bench-serving and its smoke test.
tools:
	bash scripts/install_tools.sh

demo: venv
	PY=$(PY) bash scripts/demo.sh

test: venv tools
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

# The build job on the portable runner with SDK workers in separate processes, importing
# the pip-installed package, byte-identical to the DirectRunner's output (about a minute).
verify-portable: venv
	PY=$(PY) bash scripts/verify_portable.sh

clean:
	rm -rf demo_out .pytest_cache

.PHONY: bench-pipeline bench-cost bench-ablation bench-ablation-budget bench-serving bench-freshness bench-report bench-quality bench-sasrec bench-soak bench-scale
bench-pipeline: venv
	$(PY) -m benchmarks.pipeline --events 1000000 --repeats 1
	$(PY) -m benchmarks.report

bench-report: venv
	$(PY) -m benchmarks.report

# Training step and 1-user inference, 32/64/128/256 plain and 256 compressed, paper preset.
bench-cost: venv
	$(PY) -m benchmarks.train_cost --batch_size 128 --rounds 24 --calls 50 --repeats 3
	$(PY) -m benchmarks.report

# Sequence length, query tokens, layers, compression on ml-latest-small and synthetic: 34 runs,
# 43 min measured on 2 cores shared with other jobs.
bench-ablation: venv
	$(PY) -m benchmarks.ablation --datasets ml,games --train_seconds 120 --steps 50 \
	    --validation_examples 2048 --eval_examples 10000 --batch_size 64 --seeds 0
	$(PY) -m benchmarks.report

bench-serving: venv tools
	$(PY) -m benchmarks.serving --catalogs 0,1000000 --concurrency 1,8,32 --seconds 6
	$(PY) -m benchmarks.report

# 10 minutes of valid and hostile traffic (benchmarks/hostile_requests.py) at concurrency 32 with
# two version swaps, against the demo's model; about 13 minutes with the model's training.
bench-soak: venv
	$(PY) -m benchmarks.soak --seconds 600 --concurrency 32 --swaps 2
	$(PY) -m benchmarks.report

# 1M, 3M and 10M items: export, SavedModel size, server RSS, p50/p99 at concurrency 1 and 32,
# ScaNN recall@100 against brute force, refresh (index rebuilt, swapped in under load).
# Then landed -> served at each size: the online trainer from a first model padded to that
# many items, the user tower served alone beside it, one client calling it 20 times a second.
# oneDNN off: its allocator kept the trainer's peak after each micro-batch (docs/scaling.md).
SCALE_SIZES = 1000000 3000000 10000000
bench-scale: venv tools
	$(PY) -m benchmarks.scale --catalogs 1000000,3000000,10000000 --concurrency 1,32 --seconds 8
	for n in $(SCALE_SIZES); do \
	  TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m benchmarks.freshness --batches 3 --index scann \
	      --catalog_size $$n --servable user_tower --index_every_s 0 --lazy_adam \
	      --before_training_examples 256 --load_client --load_client_rate 20 \
	      --output benchmarks/results/freshness_$$n.json || exit 1; \
	done
	$(PY) -m benchmarks.report

bench-freshness: venv
	$(PY) -m benchmarks.freshness --users 2000 --items 3000 --batches 6 --index scann
	$(PY) -m benchmarks.report

# KuaiFormer vs SASRec (BCE, in-batch), ItemKNN, most popular on SASRec Games and
# ml-latest-small, with BENCHMARKS.md's budgets: 20 (Games) and 15 (ml) minutes of training
# per model, three trained models each; run it on an otherwise idle machine.
bench-quality: venv
	$(PY) -m benchmarks.quality --datasets games --train_seconds 1200
	$(PY) -m benchmarks.quality --datasets ml --train_seconds 900
	$(PY) -m benchmarks.report

# The SASRec reproduction (Games, sampled protocol) with the published budget: 200 epochs
# over the 30,711 training users at batch 128 (239 steps each); about an hour on 2 idle cores.
bench-sasrec: venv
	$(PY) -m benchmarks.quality --datasets games --models sasrec_bce --max_epochs 200 \
	    --steps_per_epoch 239 --validation_steps 5 --train_seconds 7200 \
	    --output benchmarks/results/quality_games_sasrec_200_epochs.json
	$(PY) -m benchmarks.report

# Ablation points again with 3x the steps: do the disagreements come from the budget?
bench-ablation-budget: venv
	$(PY) -m benchmarks.ablation --datasets synthetic --max_lens 8,64 --query_tokens 1,7 \
	    --layers 1,5 --compressed_len 0 --training_targets last --epochs 3 --steps 100 \
	    --batch_size 64 --seeds 0 --output /tmp/tfkf-ablation-300-steps.json
	$(PY) -m benchmarks.ablation --datasets synthetic --max_lens 8,64 --query_tokens 1,7 \
	    --layers 1,5 --compressed_len 0 --training_targets last --epochs 3 --steps 300 \
	    --batch_size 64 --seeds 0 --compare_to /tmp/tfkf-ablation-300-steps.json
	$(PY) -m benchmarks.report
