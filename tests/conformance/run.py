"""Starts Hare and RabbitMQ (Debian's package, with its management plugin) on their own
loopback ports and runs the differential tests between them: amqp_diff.py with the arguments
before `--http`, and http_diff.py with those after it (the HTTP API's test; it runs only when
`--http` is given), and with `--stream` stream_diff.py (the stream protocol's test; RabbitMQ
with its rabbitmq_stream plugin). `--self` runs RabbitMQ against itself instead, to show that
the scenarios are deterministic. For example:
    run.py --stream --scripted --seeds 0:200 --ops 40 --http --scripted --seeds 0:20
    run.py --http --scripted --only queues"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import compare  # noqa: E402  (the broker launchers of the benchmark)


class Hare(compare.Hare):
    port = int(os.environ.get("CONFORMANCE_HARE_PORT", "5711"))
    http_port = port + 10000
    stream_port = port + 40

    def __init__(self):
        super().__init__(prefix="hare-conformance-")


class RabbitMQ(compare.RabbitMQ):
    port = int(os.environ.get("CONFORMANCE_RABBITMQ_PORT", "5712"))
    http_port = port + 10000
    node = "hareconformance@localhost"
    stream_port = port + 40
    plugins = ("rabbitmq_management", "rabbitmq_shovel", "rabbitmq_shovel_management", "rabbitmq_stream")
    # Statistics every 100 ms (5 s by default), so that the HTTP test's reads settle quickly.
    conf = (
        f"management.tcp.port = {http_port}",
        f"stream.listeners.tcp.1 = {stream_port}",
        "management.tcp.ip = 127.0.0.1",
        "collect_statistics_interval = 100",
    )

    def __init__(self):
        self.dir = os.path.join(tempfile.gettempdir(), "hare-conformance-rabbitmq")
        self.proc = None

    def env(self):
        e = super().env()
        e["RABBITMQ_DIST_PORT"] = str(self.port + 20000)
        return e


def main():
    args = sys.argv[1:]
    self_check = "--self" in args
    stream = "--stream" in args
    args = [a for a in args if a not in ("--self", "--stream")]
    amqp_args, http_args = args, None
    if "--http" in args:
        i = args.index("--http")
        amqp_args, http_args = args[:i], args[i + 1 :]
    rabbit = RabbitMQ()
    brokers = [rabbit] if self_check else [Hare(), rabbit]
    for b in brokers:
        for port in (b.port, b.http_port, b.stream_port):
            if not compare.port_free(port):
                raise SystemExit(f"port {port} for {b.name} is in use")
    try:
        for b in brokers:
            print(f"starting {b.name} on ports {b.port} and {b.http_port}", flush=True)
            b.start()
        for b in brokers:
            if not compare.wait_port(b.http_port, time.monotonic() + 120):
                raise SystemExit(f"{b.name}'s HTTP API did not start")
        first, last = brokers[0], brokers[-1]
        code = 0
        if amqp_args:
            cmd = [sys.executable, os.path.join(HERE, "amqp_diff.py"),
                   "--a", f"127.0.0.1:{first.port}", "--b", f"127.0.0.1:{last.port}", *amqp_args]
            code = subprocess.run(cmd).returncode
        if stream:
            print("== the stream protocol", flush=True)
            if not all(compare.wait_port(b.stream_port, time.monotonic() + 120) for b in brokers):
                raise SystemExit("a stream listener did not start")
            cmd = [sys.executable, os.path.join(HERE, "stream_diff.py"),
                   "--a", f"127.0.0.1:{first.stream_port}", "--b", f"127.0.0.1:{last.stream_port}"]
            code = subprocess.run(cmd).returncode or code
        if http_args is not None:
            print("== the management API", flush=True)
            cmd = [sys.executable, os.path.join(HERE, "http_diff.py"),
                   "--a", f"127.0.0.1:{first.port},{first.http_port}",
                   "--b", f"127.0.0.1:{last.port},{last.http_port}", *http_args]
            code = subprocess.run(cmd).returncode or code
        return code
    finally:
        for b in brokers:
            b.stop()


if __name__ == "__main__":
    sys.exit(main())
