#!/usr/bin/env bash
# Scale benchmark (bench/scale.py): Hare and RabbitMQ as bindings grow. Installs RabbitMQ from
# Debian's packages if missing (needs root) and builds Hare.
#   BINDINGS=10000,100000 DURATION=10 bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench/prepare.sh
exec .venv/bin/python bench/scale.py "$@"
