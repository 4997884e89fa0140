#!/usr/bin/env bash
# Installs RabbitMQ from Debian's packages if it is missing (needs root). Used by the benchmark
# and by the differential conformance run, which start their own nodes on other ports.
set -euo pipefail
if ! command -v rabbitmq-server >/dev/null; then
  echo "== installing rabbitmq-server from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
