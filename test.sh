#!/usr/bin/env bash
# Runs every test: formatting, unit and integration tests (Rust), the Python suite (pika, aio-pika,
# kombu/Celery, rabbitmqadmin, pyrabbit2, the web page in headless Chromium) and the
# differential conformance run against RabbitMQ, and short runs of the fuzz targets.
# Installs what it needs itself: a Python venv with the packages in tests/python/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"

# Each step's header says how long the run has taken so far (CI must stay under 30 minutes).
step() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo build --release"
cargo build --release --locked

step "cargo test --release"
cargo test --release --locked

step "fuzz targets: codec, SASL, management API; 15 s each from the seed corpus"
fuzz/run.sh

step "python venv"
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's python3 needs python3-venv for this; install it when we may.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && python3 -m venv .venv
    else
      echo "python3 -m venv failed: install python3-venv" >&2
      exit 1
    fi
  fi
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

# Installs Debian package $2 (by default named as the command) when command $1 is missing
# (root only), else says what to do.
need() {
  command -v "$1" >/dev/null && return 0
  local pkg="${2:-$1}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
  else
    echo "$1 missing: install Debian's $pkg package" >&2
    exit 1
  fi
}

step "chromium (the web page's tests drive it headless)"
need chromium

step "openssl (the TLS tests make their certificates with it)"
need openssl

step "ss (the socket-buffer test reads the broker's sockets with it)"
need ss iproute2

step "mosquitto-clients (the MQTT tests' second client)"
need mosquitto_pub mosquitto-clients

step "differential conformance against RabbitMQ: AMQP (scripted and 200 random seeds), the stream protocol (scripted), the management API (scripted and 60 random seeds)"
# Installs RabbitMQ from Debian's packages when missing (the first run takes a minute or two).
tests/conformance/run.sh --stream --scripted --seeds 0:200 --ops 40 --http --scripted --seeds 0:60 --ops 30

step "pytest (pika, aio-pika, kombu/Celery)"
HARE_BIN="$PWD/target/release/hare" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider
