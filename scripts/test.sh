#!/usr/bin/env bash
# Install the tested stack into .venv and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train,serve,dev]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
