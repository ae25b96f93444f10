#!/usr/bin/env bash
# make verify-portable: the build job on Beam's portable runner, its SDK worker a separate
# process started by a worker pool in a directory without the checkout, importing the pip-installed
# package (pyproject.toml) — the closest this machine gets to a Flink/Spark/Dataflow
# cluster. The job stages the package (--setup_file, python -m build) as it would for one.
# Its outputs must be byte-identical to the DirectRunner's, in process and on 2 processes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: the steps below change directory
WORK="$(mktemp -d)"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cleanup() { [ -n "${POOL:-}" ] && kill "$POOL" 2>/dev/null; rm -rf "$WORK" "$ROOT/tfkf.egg-info"; }
trap cleanup EXIT

"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/wheel" "$ROOT"
"$PY" -m pip install --quiet --no-deps --target "$WORK/site" "$WORK"/wheel/tfkf-*.whl
rm -rf "$ROOT/build"
mkdir "$WORK/workers"
# The worker pool starts each SDK worker as `python` from PATH.
(cd "$WORK/workers" && PATH="$(dirname "$PY"):$PATH" PYTHONPATH="$WORK/site" \
   exec "$PY" -m apache_beam.runners.worker.worker_pool_main --service_port="$PORT" \
   > "$WORK/pool.log" 2>&1) &
POOL=$!

cd "$WORK"
PYTHONPATH="$WORK/site" "$PY" -m beam_pipelines.synthetic --users 200 --items 300 \
  --output "$WORK/log.csv" --items_output "$WORK/items.csv" > /dev/null
build() {
  (cd "$ROOT" && "$PY" -m beam_pipelines.build --input="$WORK/log.csv" --format=kuairand \
     --item_features="$WORK/items.csv" --num_shards=3 --output_dir="$WORK/$1" "${@:2}" \
     > "$WORK/$1.log" 2>&1) || { tail -30 "$WORK/$1.log"; exit 1; }
  # metadata.json records the flags, output_dir included: compare it without that one.
  (cd "$WORK/$1" && find . -type f ! -name metadata.json | sort | xargs sha256sum
   "$PY" -c 'import json; m = json.load(open("metadata.json")); m["flags"].pop("output_dir"); print(json.dumps(m, sort_keys=True))' | sha256sum
  ) > "$WORK/$1.sums"
}
build in_process --runner=DirectRunner
build two_processes --runner=DirectRunner --direct_running_mode=multi_processing
build portable --runner=PortableRunner --job_endpoint=embed --environment_type=EXTERNAL \
  --environment_config="localhost:$PORT"
grep -q "Starting worker" "$WORK/pool.log" || { echo "no SDK worker was started"; exit 1; }
diff "$WORK/in_process.sums" "$WORK/two_processes.sums"
diff "$WORK/in_process.sums" "$WORK/portable.sums"
echo "byte-identical: $(wc -l < "$WORK/in_process.sums") files, in process, on 2 DirectRunner processes and on the portable runner with $(grep -c 'Starting worker' "$WORK/pool.log") external SDK worker(s)"
