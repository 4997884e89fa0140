#!/usr/bin/env bash
# Differential conformance run, Hare against RabbitMQ from Debian's packages (installed here if
# missing; needs root for that). Arguments go to amqp_diff.py, for example:
#   tests/conformance/run.sh --scripted --seeds 0:1000 --ops 40
#   tests/conformance/run.sh --self --seeds 0:1000     # RabbitMQ against itself
set -euo pipefail
cd "$(dirname "$0")/../.."
bench/install-rabbitmq.sh
# Debian's package starts a node of its own on 5672 where it can; the run does not need it.
cargo build --release --locked
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
exec .venv/bin/python tests/conformance/run.py "$@"
