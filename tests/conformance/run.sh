#!/usr/bin/env bash
# Differential conformance run, Hare against RabbitMQ from Debian's packages (installed here if
# missing; needs root for that). Arguments go to amqp_diff.py, for example:
#   tests/conformance/run.sh --scripted --seeds 0:1000 --ops 40
#   tests/conformance/run.sh --self --seeds 0:1000     # RabbitMQ against itself
set -euo pipefail
cd "$(dirname "$0")/../.."
# RabbitMQ, the build and the venv; Debian's package may start a node of its own on 5672,
# which the run does not use.
bench/prepare.sh
exec .venv/bin/python tests/conformance/run.py "$@"
