#!/usr/bin/env bash
# Scale benchmark (bench/scale.py): Hare and RabbitMQ as bindings grow. Installs RabbitMQ from
# Debian's packages if missing (needs root) and builds Hare.
#   BINDINGS=10000,100000 DURATION=10 bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench/install-rabbitmq.sh
cargo build --release --locked
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
exec .venv/bin/python bench/scale.py "$@"
