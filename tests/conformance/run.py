"""Starts Hare and RabbitMQ (Debian's package) on their own loopback ports and runs
amqp_diff.py between them; `--self` runs RabbitMQ against itself instead, to show that the
scenarios are deterministic. Extra arguments go to amqp_diff.py."""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import compare  # noqa: E402  (the broker launchers of the benchmark)


class Hare(compare.Hare):
    port = int(os.environ.get("CONFORMANCE_HARE_PORT", "5711"))

    def __init__(self):
        super().__init__(prefix="hare-conformance-")


class RabbitMQ(compare.RabbitMQ):
    port = int(os.environ.get("CONFORMANCE_RABBITMQ_PORT", "5712"))
    node = "hareconformance@localhost"

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
    args = [a for a in args if a != "--self"]
    rabbit = RabbitMQ()
    brokers = [rabbit] if self_check else [Hare(), rabbit]
    for b in brokers:
        if not compare.port_free(b.port):
            raise SystemExit(f"port {b.port} for {b.name} is in use")
    try:
        for b in brokers:
            print(f"starting {b.name} on port {b.port}", flush=True)
            b.start()
        a = f"127.0.0.1:{brokers[0].port}"
        other = f"127.0.0.1:{brokers[-1].port}"
        cmd = [sys.executable, os.path.join(HERE, "amqp_diff.py"), "--a", a, "--b", other, *args]
        return subprocess.run(cmd).returncode
    finally:
        for b in brokers:
            b.stop()


if __name__ == "__main__":
    sys.exit(main())
