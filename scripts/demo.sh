#!/usr/bin/env bash
# The main job on a fresh clone: install, train two tasks on the shipped samples with the packaged
# MiniLM, export one bundle, serve it, send one mixed-task request, print the answers, stop.
# Output goes to runs/demo (this demo's own folder, replaced on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BITFIT_DEMO_DIR:-runs/demo}
port=${BITFIT_DEMO_PORT:-8765}
epochs=${BITFIT_DEMO_EPOCHS:-1}

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train,serve]"
bd=.venv/bin/bitfit-deploy
mkdir -p "$out"

echo "== 1/4 train: sentiment (SST-2 sample) and question-type (TREC sample), biases + head only"
$bd train --task sentiment --preset sst2 --train examples/data/sst2/train.tsv --eval examples/data/sst2/dev.tsv \
  --epochs "$epochs" --output "$out/sentiment.safetensors" --force
$bd train --task question-type --train examples/data/trec/train.tsv --eval examples/data/trec/test.tsv \
  --text-column text --label-column label --epochs "$epochs" --output "$out/question-type.safetensors" --force
ls -l "$out"/*.safetensors

echo "== 2/4 export: one ONNX graph, biases and heads as per-row inputs"
$bd export --onnx --output "$out/bundle" --task "$out/sentiment.safetensors" \
  --task "$out/question-type.safetensors" --quantize int8 --force

echo "== 3/4 serve on 127.0.0.1:$port"
$bd serve --bundle "$out/bundle" --port "$port" --threads 2 --log-level warning &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT

echo "== 4/4 query: one request mixing both tasks"
.venv/bin/python examples/query.py --url "http://127.0.0.1:$port"
kill -TERM "$server"
wait "$server" || true
trap - EXIT
echo "done: the deltas and the bundle are in $out"
