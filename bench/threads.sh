#!/usr/bin/env bash
# Thread placement benchmark (bench/threads.py): the broker's CPU per large message with its
# worker threads placed four ways. Hare only: builds it and the Python venv.
#   SIZE=65536 ROUNDS=3 DURATION=10 bench/threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
exec .venv/bin/python bench/threads.py "$@"
