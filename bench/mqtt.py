"""The MQTT rows of the benchmark: Hare against RabbitMQ 3.10 with its MQTT plugin and against
mosquitto, both from Debian's packages with their default settings, each broker started
afresh for each run, loaded by the same `hare perf --uri mqtt://...` (MQTT 3.1.1).

- Rows 18-21: throughput, messages of 16 B, one publisher to one subscriber and a fan-in of
  1,000 publishers to one subscriber, at QoS 0 and at QoS 1 (publishers keep 256 publishes
  awaiting their PUBACK; the subscriber acknowledges each message). The figure is what the
  subscriber received per second. Beside it, the CPU the broker and the load generator used,
  in percent of one core (the broker's over the generator's whole run, connecting included;
  the generator's over the measured window): on 2 cores, the generator is not the bottleneck
  while the two together stay clearly under 200 %.
- Row 22: 10,000 connected clients, each subscribed at QoS 1 to a topic of its own: the
  broker's resident memory before and after, per client.

Rounds alternate the brokers (Hare, RabbitMQ, mosquitto, then again) and the mean is shown."""
import os
import shutil
import subprocess
import tempfile
import time

import compare
from compare import DURATION, HARE, ROUNDS, mean, wait_port, want
from helpers import rss_kib  # (compare put tests/python on the path: shared with the tests)

CLIENTS = int(os.environ.get("MQTT_CLIENTS", "10000"))


class HareMqtt(compare.Hare):
    mqtt_port = 5731


class RabbitMqtt(compare.RabbitMQ):
    mqtt_port = 5732
    plugins = ("rabbitmq_mqtt",)
    conf = (f"mqtt.listeners.tcp.default = {mqtt_port}",)


class Mosquitto:
    name = "mosquitto"
    mqtt_port = 5733

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hare-bench-mosquitto-")
        self.proc = None

    def start(self):
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            # Its defaults otherwise; a listener of its own needs anonymous clients allowed
            # explicitly (the load generator sends a user name, which it then ignores).
            f.write(f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\n")
        self.log = open(os.path.join(self.dir, "mosquitto.log"), "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_port(self.mqtt_port, time.monotonic() + 60):
            raise RuntimeError("mosquitto did not start")

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.proc = None


def cpu_seconds(pid):
    """A process's user and system CPU time so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perf(broker, *args, timeout=None):
    """Runs `hare perf` against the broker's MQTT port: its summary (with the generator's
    own CPU over the measured window), and the broker's CPU over the generator's whole run
    (connecting and stopping included), in percent of one core."""
    import json

    cmd = [HARE, "perf", "--uri", f"mqtt://guest:guest@127.0.0.1:{broker.mqtt_port}", "--json", "--quiet", *map(str, args)]
    broker_before, started = cpu_seconds(broker.pid()), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or DURATION * 6 + 300)
    broker_cpu = 100 * (cpu_seconds(broker.pid()) - broker_before) / (time.monotonic() - started)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return json.loads(out.stdout), broker_cpu


THROUGHPUT = [
    (18, "18. MQTT QoS 0, 1 publisher, 1 subscriber, 16 B", ["--qos", 0]),
    (19, "19. MQTT QoS 1, 1 publisher, 1 subscriber, 16 B", ["--qos", 1]),
    (20, "20. MQTT QoS 0 fan-in, 1,000 publishers, 1 subscriber, 16 B", ["--qos", 0, "--producers", 1000]),
    (21, "21. MQTT QoS 1 fan-in, 1,000 publishers, 1 subscriber, 16 B", ["--qos", 1, "--producers", 1000]),
]


def row(title, metric, values, fmt, ratios=True):
    """A table row: the three brokers' figures and, with `ratios`, Hare's to each other's."""
    h, r, m = values
    ratio = lambda other: f"{h / other:.2f}" if ratios and other else ""
    return f"| {title} | {metric} | {fmt.format(h)} | {fmt.format(r)} | {fmt.format(m)} | {ratio(r)} | {ratio(m)} |"


def start(broker):
    """Starts the broker and waits for its MQTT port (RabbitMQ opens it after AMQP's)."""
    broker.start()
    if not wait_port(broker.mqtt_port, time.monotonic() + 120):
        raise RuntimeError(f"{broker.name} does not listen for MQTT")


def connected_clients(port):
    out = subprocess.run(["bash", "-c", f"ss -tn state established '( sport = :{port} )' | tail -n +2 | wc -l"],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0)


def idle_clients(broker, log):
    """Connects CLIENTS clients, each subscribed to its own topic; the broker's KiB per client."""
    start(broker)
    try:
        time.sleep(1)  # let the broker settle before the baseline reading, not a wait for a condition
        before = rss_kib(broker.pid())
        p = subprocess.Popen(
            [HARE, "perf", "--uri", f"mqtt://guest:guest@127.0.0.1:{broker.mqtt_port}", "--idle-connections", str(CLIENTS),
             "--idle-consumers", "--qos", "1", "--duration", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The generator says when every client has its CONNACK and SUBACK.
        line = p.stdout.readline()
        held = connected_clients(broker.mqtt_port)
        if not line.startswith("opened"):
            log(f"22. {broker.name}: the generator stopped: {line.strip()} {p.stderr.read().strip()[:300]}")
        time.sleep(2)  # the broker's memory after the last subscription settles
        after = rss_kib(broker.pid())
        p.kill()
        p.wait()
    finally:
        broker.stop()
    per = (after - before) / max(held, 1)
    log(f"22. {broker.name}: {held} clients held, {per:.1f} KiB each (RSS {before} -> {after} KiB)")
    return held, per


def run(log):
    """Runs the MQTT rows that are wanted; returns the results section's lines."""
    if not shutil.which("mosquitto"):
        raise SystemExit("mosquitto is not installed: bench/prepare.sh installs it")
    brokers = [HareMqtt(prefix="hare-bench-mqtt-"), RabbitMqtt(), Mosquitto()]
    for b in brokers:
        if not compare.port_free(b.mqtt_port):
            raise SystemExit(f"port {b.mqtt_port} for {b.name} is in use: stop what listens there first")
    lines = [
        "## MQTT",
        "",
        "MQTT 3.1.1 from `hare perf --uri mqtt://...` (16 B messages; QoS 1: 256 publishes awaiting PUBACK",
        "per publisher). RabbitMQ with its `rabbitmq_mqtt` plugin and mosquitto "
        + subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "mosquitto"], capture_output=True, text=True).stdout
        + ", both from Debian's packages, default settings. CPU: percent of one core (the broker's over",
        "the generator's whole run, connecting included; the generator's over the measured window).",
        "",
        "| scenario | metric | Hare | RabbitMQ | mosquitto | Hare / RabbitMQ | Hare / mosquitto |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for number, title, args in THROUGHPUT:
        if not want(number):
            continue
        got = {b.name: [] for b in brokers}
        for r in range(ROUNDS):
            for b in brokers:
                start(b)
                try:
                    s, broker_cpu = perf(b, "--duration", DURATION, "--prefix", f"bench{r}", *args)
                finally:
                    b.stop()
                got[b.name].append((s["consumed_per_sec"], broker_cpu, s["cpu_percent"]))
                log(f"{title} | {b.name} round {r + 1}: consumed {s['consumed_per_sec']:.0f}/s, published "
                    f"{s['published_per_sec']:.0f}/s, broker CPU {broker_cpu:.0f} %, generator CPU {s['cpu_percent']:.0f} %")
        for i, metric, fmt in [(0, "received msg/s", "{:,.0f}"), (1, "broker CPU %", "{:.0f}"), (2, "hare perf CPU %", "{:.0f}")]:
            values = [mean([x[i] for x in got[b.name]]) for b in brokers]
            lines.append(row(title, metric, values, fmt, ratios=i == 0))
    if want(22):
        held = {b.name: idle_clients(b, log) for b in brokers}
        title = f"22. {CLIENTS:,} connected clients, each subscribed to its own topic (QoS 1)"
        lines.append(row(title, "broker KiB per client", [held[b.name][1] for b in brokers], "{:.1f}"))
        lines.append(row(title, "clients held", [held[b.name][0] for b in brokers], "{}", ratios=False))
    return lines
