"""The cost of TLS and of encryption at rest: Hare against itself on this machine.

Rows 1 and 3 of compare.py run over plain TCP and over AMQPS (TLS 1.3, a certificate made
here with openssl); row 3 (persistent, confirmed) runs with and without encryption at rest.
Each pair alternates A B A B, every run on a fresh broker; the mean is shown.
    DURATION=10 ROUNDS=2 .venv/bin/python bench/security.py
Writes bench/results/<date>-security.md."""
import datetime
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import DURATION, HARE, ROUNDS, THROUGHPUT, perf, wait_port  # noqa: E402
import compare  # noqa: E402


class Hare(compare.Hare):
    """compare.py's Hare with extra flags; AMQPS on port + 1 when TLS is on."""

    def __init__(self, extra=(), tls_dir=None):
        if tls_dir:
            extra = [*extra, "--tls-cert", f"{tls_dir}/server.pem", "--tls-key", f"{tls_dir}/server.key",
                     "--tls-port", str(self.port + 1)]
        super().__init__(extra=extra)
        self.tls_dir = tls_dir

    def start(self, fresh=True, memory_limit_mib=None):
        took = super().start(fresh, memory_limit_mib)
        if self.tls_dir and not wait_port(self.port + 1, time.monotonic() + 60):
            raise RuntimeError("hare did not open its AMQPS port")
        return took


class Tls:
    """What perf needs to reach an AMQPS port: the URI and the CA."""

    def __init__(self, broker, ca):
        self.broker, self.ca = broker, ca

    def perf(self, *args):
        # compare.perf builds an amqp:// URI from .port; go around it for amqps.
        import json

        uri = f"amqps://guest:guest@localhost:{self.broker.port + 1}/%2f"
        cmd = [HARE, "perf", "--uri", uri, "--tls-ca", self.ca, "--json", "--quiet", *map(str, args)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION * 6 + 120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
        return json.loads(out.stdout)


def certificates():
    d = tempfile.mkdtemp(prefix="hare-bench-tls-")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=bench CA",
            "-days", "2", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-subj", "/CN=localhost",
            "-out", "server.csr")
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext", "-out", "server.pem")
    key = os.path.join(d, "at-rest.key")
    with open(key, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return d, key


def rate(summary):
    return summary["consumed_per_sec"]


def pair(label, flags, a, run_a, b, run_b):
    """Alternates a and b ROUNDS times; returns the row."""
    got = {"a": [], "b": []}
    for _ in range(ROUNDS):
        for key, broker, run in (("a", a, run_a), ("b", b, run_b)):
            broker.start()
            try:
                got[key].append(rate(run(*flags, "--duration", DURATION)))
            finally:
                broker.stop()
    ma, mb = sum(got["a"]) / len(got["a"]), sum(got["b"]) / len(got["b"])
    return (label, f"{ma:,.0f}", f"{mb:,.0f}", f"{(1 - mb / ma) * 100:.1f} %")


def main():
    tls_dir, key = certificates()
    plain = Hare()
    tls = Hare(tls_dir=tls_dir)
    sealed = Hare(extra=["--encryption-key-file", key])
    over_tls = Tls(tls, os.path.join(tls_dir, "ca.pem"))
    rows = []
    for name, flags in (THROUGHPUT[0], THROUGHPUT[2]):
        rows.append(pair(f"{name}: plain TCP vs AMQPS (TLS 1.3)", flags,
                         plain, lambda *a: perf(plain, *a), tls, over_tls.perf))
        print(rows[-1], flush=True)
    name, flags = THROUGHPUT[2]
    rows.append(pair(f"{name}: plain vs encryption at rest (AES-256-GCM)", flags,
                     plain, lambda *a: perf(plain, *a), sealed, lambda *a: perf(sealed, *a)))
    print(rows[-1], flush=True)
    today = datetime.date.today().isoformat()
    head = compare.revision()
    lines = [
        f"# The cost of TLS and of encryption at rest, {today}",
        "",
        f"Machine: {os.cpu_count()} cores. Hare at {head} against itself; `hare perf` on loopback,",
        f"{DURATION:.0f} s per run, {ROUNDS} rounds alternating the two settings (mean shown), each run",
        "on a fresh broker. Consumed messages per second.",
        "",
        "| scenario | without | with | cost |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    compare.save(f"{today}-security", lines)


if __name__ == "__main__":
    sys.exit(main())
