#!/usr/bin/env bash
# make demo: synthetic log -> Beam -> model.fit -> SavedModel with ScaNN -> server -> REST and gRPC calls.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=${DEMO_PORT:-$(free_port)}
GRPC_PORT=${DEMO_GRPC_PORT:-$(free_port)}
USER_ID=${DEMO_USER:-42}
stage() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

rm -rf "$OUT"
stage "1/7 synthetic short-video log"
$PY -m beam_pipelines.synthetic --users 2000 --items 3000 --seed 7 --output "$OUT/raw/log.csv"

stage "2/7 Beam build (DirectRunner)"
$PY -m beam_pipelines.build --runner=DirectRunner --input="$OUT/raw/log.csv" --format=kuairand \
    --item_features="$OUT/raw/items.csv" --output_dir="$OUT/data" --max_len=64
cat "$OUT/data/stats.txt"

stage "3/7 training with model.fit (small preset)"
$PY -m tfkf.train --data_dir="$OUT/data" --model_dir="$OUT/run" --preset=small \
    --epochs=4 --steps_per_epoch=150 --batch_size=128 --verbose=2

stage "4/7 export SavedModel with an embedded ScaNN index"
$PY -m serving.export --model_dir="$OUT/run" --data_dir="$OUT/data" \
    --export_base="$OUT/models/kuaiformer" --index=scann --top_k=100

stage "5/7 start the TF-Serving-compatible server on 127.0.0.1 (REST :$PORT, gRPC :$GRPC_PORT)"
$PY -m serving.server --model_name=kuaiformer --model_base_path="$OUT/models/kuaiformer" \
    --rest_api_port="$PORT" --port="$GRPC_PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT

HISTORY=$(awk -F, -v u="$USER_ID" 'NR > 1 && $1 == u && ($6 == 1 || $12 == 1) {print $2}' \
    "$OUT/raw/log.csv" | tail -n 50 | paste -sd, -)
stage "6/7 REST predict for user $USER_ID (history of $(echo "$HISTORY" | tr , '\n' | wc -l) items)"
echo "POST http://127.0.0.1:$PORT/v1/models/kuaiformer:predict"
$PY -m serving.client --history "$HISTORY" --model_name=kuaiformer --rest_api_port="$PORT" \
    --top 10 --wait_s 120

stage "7/7 the same call over gRPC (tensorflow.serving.PredictionService/Predict)"
$PY -m serving.client --history "$HISTORY" --model_name=kuaiformer --grpc --port="$GRPC_PORT" --top 10

stage "stopping the server"
kill $SERVER
wait $SERVER 2>/dev/null || true
trap - EXIT
echo "demo done: artifacts under $OUT/"
