# Quickstart: `make demo`, `make test`. Both create .venv from requirements.txt if needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: venv demo test clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	PY=$(PY) bash scripts/demo.sh

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

clean:
	rm -rf demo_out .pytest_cache

.PHONY: bench-pipeline bench-train bench-ablation bench-serving bench-freshness bench-report
bench-pipeline: venv
	$(PY) -m benchmarks.pipeline --events 1000000 --repeats 1
	$(PY) -m benchmarks.report

bench-report: venv
	$(PY) -m benchmarks.report

bench-train: venv
	$(PY) -m benchmarks.train_cost --batch_size 256 --steps 10 --repeats 3
	$(PY) -m benchmarks.report

bench-ablation: venv
	$(PY) -m benchmarks.ablation --field num_query_tokens --values 1,4 --seeds 0,1,2
	$(PY) -m benchmarks.report

bench-serving: venv
	$(PY) -m benchmarks.serving --catalogs 0,1000000 --concurrency 1,8,32 --seconds 8
	$(PY) -m benchmarks.report

bench-freshness: venv
	$(PY) -m benchmarks.freshness --users 2000 --items 3000 --batches 6 --index scann
	$(PY) -m benchmarks.report
