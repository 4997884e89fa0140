#!/usr/bin/env bash
# What the benchmarks and the conformance run need before they start: RabbitMQ from Debian's
# packages (installed if missing; needs root), a release build of Hare, and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rabbitmq-server >/dev/null; then
  echo "== installing rabbitmq-server from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
cargo build --release --locked --bins --examples
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
