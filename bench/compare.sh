#!/usr/bin/env bash
# Side-by-side benchmark of Hare and RabbitMQ on this machine, with the same load generator
# (`hare perf`). Installs RabbitMQ from Debian's packages if missing, builds Hare, and writes
# bench/results/<date>.md. Not a test: it takes about 20 minutes and needs root for the install.
#   DURATION=10 ROUNDS=2 bench/compare.sh        # seconds per throughput run, A/B rounds
set -euo pipefail
cd "$(dirname "$0")/.."

bench/prepare.sh

# 10,000 connections need descriptors on both sides: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" || true
exec .venv/bin/python bench/compare.py "$@"
