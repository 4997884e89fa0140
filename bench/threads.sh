#!/usr/bin/env bash
# Thread placement benchmark (bench/threads.py): the broker's CPU per large message with its
# worker threads placed four ways. Builds Hare and the venv (bench/prepare.sh).
#   SIZE=65536 ROUNDS=3 DURATION=10 bench/threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench/prepare.sh
exec .venv/bin/python bench/threads.py "$@"
