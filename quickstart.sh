#!/usr/bin/env bash
# The main job end to end on the embedded synthetic EM data (no download): train, segment
# new images, export for TensorFlow Serving, serve the export locally and segment through
# the client, over gRPC and over the REST API. Rerunning resumes or reuses what is done.
# README's first command runs it.
set -euo pipefail
cd "$(dirname "$0")"
run=runs/quickstart
port=${PORT:-8500}
rest_port=${REST_PORT:-$((port + 1))}

.venv/bin/python train_keras.py --run-dir "$run" --epochs 4 --steps-per-epoch 25
.venv/bin/unet-keras synthetic "$run/new" --count 2 --seed 1
.venv/bin/unet-keras predict --model "$run" --input "$run/new/images" --output "$run/predictions" --overlay

# One version is enough here: a rerun serves it rather than stacking identical ones.
[ -d "$run/export/1" ] || .venv/bin/unet-keras export --model "$run" --base-path "$run/export"
.venv/bin/unet-keras serve --model-base-path "$run/export" --model-name unet --port "$port" \
    --rest-api-port "$rest_port" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
.venv/bin/unet-client segment "$run/new/images" -o "$run/served" --server "localhost:$port" \
    --model unet --wait 120
.venv/bin/unet-client segment "$run/new/images" -o "$run/served_rest" --rest \
    --server "localhost:$rest_port" --model unet --wait 120

cat <<DONE

Done. Model: $run/best.keras (summary: $run/summary.json)
Masks from unet-keras predict: $run/predictions/ (with overlays)
TensorFlow Serving export: $run/export/1/
Masks through gRPC from the local server: $run/served/
Masks through its REST API: $run/served_rest/
DONE
