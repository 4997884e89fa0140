#!/usr/bin/env bash
# What the benchmarks and the conformance run need before they start: RabbitMQ and mosquitto
# from Debian's packages (installed if missing; needs root), a release build of Hare, and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
# The MQTT rows compare with mosquitto too.
command -v mosquitto >/dev/null || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked --bins --examples
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
