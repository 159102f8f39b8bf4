#!/usr/bin/env bash
# Install the tested stack into .venv, lint, and run every test (slow ones on the packaged MiniLM too; CUDA tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train,serve,dev,ray]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -m "slow or not slow" "$@"
