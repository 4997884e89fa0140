"""Runs the benchmark matrix against Hare and RabbitMQ and writes bench/results/<date>.md.

Both brokers run on this machine, on their own ports and data directories, one at a time,
loaded by the same `hare perf`. Throughput rows alternate A B A B and report the mean."""
import atexit
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pika

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python"))
from helpers import PeakRss, rss_kib  # noqa: E402  (shared with the tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARE = os.path.join(ROOT, "target", "release", "hare")
DURATION = float(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
BACKLOG = int(os.environ.get("BACKLOG", "1000000"))
IDLE = int(os.environ.get("IDLE_CONNECTIONS", "10000"))
# IDLE_CONSUMERS=1: each idle connection also consumes from an exclusive queue of its own.
IDLE_CONSUMERS = os.environ.get("IDLE_CONSUMERS", "0") == "1"
# ROWS=10 or ROWS=1,10 runs only those rows (written to bench/results/<date>-rows-1-10.md).
ROWS = {int(r) for r in os.environ.get("ROWS", "").split(",") if r.strip()}


def want(row):
    return not ROWS or row in ROWS


def wait_port(port, deadline):
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def listener_pid(port):
    """The pid of the process listening on a loopback port."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    raise RuntimeError(f"nothing listens on port {port}")


def port_free(port):
    return not subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.strip()




class Hare:
    name = "Hare"
    port = 5701
    http_port = 15701
    # 0: no MQTT listener (the MQTT rows, bench/mqtt.py, set one); the same for the stream
    # protocol.
    mqtt_port = 0
    stream_port = 0

    # The broker's environment (None: this one's), what runs in it before it starts, and
    # flags added to its command line. Class attributes, so a subclass has them whatever its
    # __init__ does.
    env = None
    preexec = None
    extra = ()

    def __init__(self, prefix="hare-bench-", extra=()):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        # The data directory goes when the script ends: a flood (row 11) leaves gigabytes.
        atexit.register(shutil.rmtree, self.dir, True)
        self.proc = None
        self.extra = list(extra)

    def start(self, fresh=True, memory_limit_mib=None):
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
        self.log = open(os.path.join(self.dir, "hare.log"), "a")
        started = time.monotonic()
        limit = ["--memory-limit", f"{memory_limit_mib}MiB"] if memory_limit_mib else []
        self.proc = subprocess.Popen(
            [HARE, "--port", str(self.port), "--management-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port), "--mqtt-ws-port", "0", "--stream-port", str(self.stream_port), "--data-dir", os.path.join(self.dir, "data"), "--log", "warn", *limit, *self.extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=self.preexec,
        )
        if not wait_port(self.port, time.monotonic() + 300):
            raise RuntimeError("hare did not start")
        return time.monotonic() - started

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None


class RabbitMQ:
    name = "RabbitMQ"
    port = 5702
    node = "harebench@localhost"
    # Plugins to enable and lines added to rabbitmq.conf (the conformance run's HTTP side
    # enables the management plugin).
    plugins = ()
    conf = ()

    def __init__(self):
        self.dir = os.path.join(tempfile.gettempdir(), "hare-bench-rabbitmq")
        self.proc = None

    def env(self):
        e = dict(os.environ)
        e.update(
            # The same home as rabbitmqctl (run through su) uses, for the same Erlang cookie.
            HOME="/var/lib/rabbitmq",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT="25702",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq"),
        )
        return e

    def start(self, fresh=True, memory_limit_mib=None):
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        conf = os.path.join(self.dir, "rabbitmq.conf")
        with open(conf, "w") as f:
            if memory_limit_mib:
                f.write(f"vm_memory_high_watermark.absolute = {memory_limit_mib}MiB\n")
            for line in self.conf:
                f.write(line + "\n")
        shutil.chown(conf, "rabbitmq", "rabbitmq")
        plugins = os.path.join(self.dir, "enabled_plugins")
        with open(plugins, "w") as f:
            f.write(f"[{','.join(self.plugins)}].\n")
        shutil.chown(plugins, "rabbitmq", "rabbitmq")
        started = time.monotonic()
        # Debian's wrapper switches user with su, whose PAM session resets the descriptor
        # limit to 1024; start the server script as the rabbitmq user directly instead, so the
        # node gets the same limit as Hare (or row 7 measures that limit, not memory).
        self.proc = subprocess.Popen(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
            env=self.env(),
            cwd=self.dir,
            user="rabbitmq",
            group="rabbitmq",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.port, time.monotonic() + 600):
            raise RuntimeError("rabbitmq did not start")
        return time.monotonic() - started

    def pid(self):
        return listener_pid(self.port)

    def stop(self):
        try:
            # With tens of thousands of durable queues a clean stop takes minutes.
            subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self.env(), capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            print("rabbitmq did not stop within 600 s: killed", flush=True)
        if self.proc:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def perf(broker, *args, timeout=None, uri=None):
    """Runs `hare perf` against the broker (its AMQP port unless `uri` says otherwise)."""
    uri = uri or f"amqp://guest:guest@127.0.0.1:{broker.port}/%2f"
    cmd = [HARE, "perf", "--uri", uri, "--json", "--quiet", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or DURATION * 6 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def ready_total(broker, queues, expect, deadline):
    """Waits until the queues together hold `expect` messages; returns when they did."""
    while time.monotonic() < deadline:
        try:
            c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
            ch = c.channel()
            n = sum(ch.queue_declare(q, durable=True, passive=True).method.message_count for q in queues)
            c.close()
            if n >= expect:
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{broker.name}: {len(queues)} queues never held {expect} messages")


THROUGHPUT = [
    ("1. 1 producer, 1 consumer, 16 B, auto-ack", ["--size", 16]),
    ("2. 1 producer, 1 consumer, 1 KiB, auto-ack", ["--size", 1024]),
    (
        "3. 1 KiB persistent, durable queue, confirms (window 256), manual ack prefetch 100",
        ["--size", 1024, "--persistent", "--confirm", 256, "--ack", "manual", "--prefetch", 100],
    ),
    ("4. 4 producers, 4 consumers, 4 queues, 16 B", ["--size", 16, "--producers", 4, "--consumers", 4, "--queues", 4]),
    (
        "5. fan-out: 1 producer, fanout exchange to 8 queues, 8 consumers, 16 B",
        ["--size", 16, "--exchange", "fanout", "--queues", 8, "--consumers", 8],
    ),
]


def mean(xs):
    return sum(xs) / len(xs)


def revision():
    """The commit Hare is built from, short."""
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def save(name, lines):
    """Writes `lines` to bench/results/<name>.md and prints them. A file of that name is kept:
    a second run the same day goes to <name>-2.md, then -3, and so on."""
    path = os.path.join(ROOT, "bench", "results", f"{name}.md")
    n = 2
    while os.path.exists(path):
        path = os.path.join(ROOT, "bench", "results", f"{name}-{n}.md")
        n += 1
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))
    print(f"written to {path}")


def main():
    brokers = [Hare(), RabbitMQ()]
    for b in brokers:
        if not port_free(b.port):
            raise SystemExit(f"port {b.port} for {b.name} is in use: stop what listens there first")
    rows = []
    log = lambda *a: print(*a, flush=True)

    for title, args in THROUGHPUT:
        if not want(int(title.split(".")[0])):
            continue
        got = {b.name: [] for b in brokers}
        for r in range(ROUNDS):
            for b in brokers:
                b.start()
                try:
                    s = perf(b, "--duration", DURATION, "--prefix", f"bench{r}", *args)
                finally:
                    b.stop()
                got[b.name].append(s["consumed_per_sec"])
                log(f"{title} | {b.name} round {r + 1}: consumed {s['consumed_per_sec']:.0f}/s, published {s['published_per_sec']:.0f}/s")
        h, q = mean(got["Hare"]), mean(got["RabbitMQ"])
        rows.append((title, "consumed msg/s", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))

    # 6. Latency at a fixed moderate rate.
    if want(6):
        lat = {b.name: [] for b in brokers}
        for r in range(ROUNDS):
            for b in brokers:
                b.start()
                try:
                    s = perf(b, "--duration", DURATION, "--rate", 10000, "--size", 1024, "--prefix", f"lat{r}")
                finally:
                    b.stop()
                lat[b.name].append((s["e2e_latency"]["p50_ms"], s["e2e_latency"]["p99_ms"], s["consumed_per_sec"]))
                log(f"6. latency | {b.name}: {lat[b.name][-1]}")
        for i, what in [(0, "p50 ms"), (1, "p99 ms")]:
            h, q = mean([x[i] for x in lat["Hare"]]), mean([x[i] for x in lat["RabbitMQ"]])
            rows.append(("6. 10,000 msg/s, 1 KiB, end-to-end latency", what, f"{h:.3f}", f"{q:.3f}", f"{h / q:.2f}"))

    # 7. Idle connections: broker memory per connection.
    if want(7):
        idle = {}
        for b in brokers:
            b.start()
            try:
                time.sleep(1)  # let the broker settle before the baseline reading, not a wait for a condition
                before = rss_kib(b.pid())
                p = subprocess.Popen(
                    [HARE, "perf", "--uri", f"amqp://127.0.0.1:{b.port}", "--idle-connections", str(IDLE), "--duration", "600", "--json"]
                    + (["--idle-consumers"] if IDLE_CONSUMERS else []),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                # The generator prints nothing until done; watch the broker's connection count.
                deadline = time.monotonic() + 600
                held, best, progress = 0, 0, time.monotonic()
                while time.monotonic() < deadline and p.poll() is None:
                    held = int(subprocess.run(["bash", "-c", f"ss -tn state established '( sport = :{b.port} )' | tail -n +2 | wc -l"], capture_output=True, text=True).stdout.strip() or 0)
                    if held >= IDLE:
                        break
                    if held > best:
                        best, progress = held, time.monotonic()
                    elif time.monotonic() - progress > 30:
                        break  # no new connection for 30 s: this is all the broker takes
                    time.sleep(0.5)
                time.sleep(2)  # the last connections finish their handshakes
                after = rss_kib(b.pid())
                p.kill()
                p.wait()
            finally:
                b.stop()
            idle[b.name] = (held, (after - before) / max(held, 1))
            log(f"7. idle | {b.name}: held {held}, {idle[b.name][1]:.1f} KiB per connection")
        h, q = idle["Hare"][1], idle["RabbitMQ"][1]
        what = "1 channel, 1 queue and 1 consumer each" if IDLE_CONSUMERS else "1 channel each"
        rows.append((f"7. {IDLE:,} idle connections, {what}", "broker KiB per connection", f"{h:.1f}", f"{q:.1f}", f"{h / q:.2f}"))
        rows.append((f"7. {IDLE:,} idle connections, {what}", "connections held", str(idle["Hare"][0]), str(idle["RabbitMQ"][0]), ""))

    # 8. Backlog of persistent messages with no consumer, then restart and drain.
    if want(8):
        back = {}
        for b in brokers:
            b.start()
            s = perf(b, "--producers", 1, "--consumers", 0, "--count", BACKLOG, "--size", 1024, "--persistent", "--confirm", 256, "--duration", 1800, "--prefix", "backlog", timeout=2000)
            rss = rss_kib(b.pid())
            b.stop()
            t0 = time.monotonic()
            b.start(fresh=False)
            ready = ready_total(b, ["backlog-0"], BACKLOG, time.monotonic() + 900) - t0
            d = perf(b, "--producers", 0, "--consumers", 1, "--count", BACKLOG, "--persistent", "--ack", "manual", "--prefetch", 1000, "--duration", 1800, "--prefix", "backlog", timeout=2000)
            b.stop()
            back[b.name] = (s["published_per_sec"], rss / 1024, ready, d["consumed_per_sec"])
            log(f"8. backlog | {b.name}: {back[b.name]}")
        for i, what, fmt in [(0, "publish msg/s (confirmed)", "{:,.0f}"), (1, "broker RSS MiB with backlog", "{:.1f}"), (2, "restart to ready, s", "{:.2f}"), (3, "drain msg/s", "{:,.0f}")]:
            h, q = back["Hare"][i], back["RabbitMQ"][i]
            rows.append((f"8. {BACKLOG:,} x 1 KiB persistent, no consumer", what, fmt.format(h), fmt.format(q), f"{h / q:.2f}"))

    # 9. The same number of messages spread over 100 durable queues: restart to ready.
    if want(9):
        many = {}
        for b in brokers:
            b.start()
            s = perf(b, "--producers", 100, "--queues", 100, "--consumers", 0, "--count", BACKLOG // 100, "--size", 1024, "--persistent", "--confirm", 256, "--duration", 1800, "--prefix", "many", timeout=2000)
            b.stop()
            t0 = time.monotonic()
            b.start(fresh=False)
            ready = ready_total(b, [f"many-{i}" for i in range(100)], BACKLOG // 100 * 100, time.monotonic() + 900) - t0
            b.stop()
            many[b.name] = (s["published_per_sec"], ready)
            log(f"9. 100 queues | {b.name}: {many[b.name]}")
        for i, what, fmt in [(0, "publish msg/s (confirmed, 100 producers)", "{:,.0f}"), (1, "restart to ready, s", "{:.2f}")]:
            h, q = many["Hare"][i], many["RabbitMQ"][i]
            rows.append((f"9. {BACKLOG // 100 * 100:,} x 1 KiB persistent over 100 durable queues", what, fmt.format(h), fmt.format(q), f"{h / q:.2f}"))

    # 10. A consumer that stopped reading its socket must not slow its queue's publishers.
    if want(10):
        stall = {}
        load = ["--consumers", 0, "--size", 256, "--confirm", 256, "--duration", DURATION]
        for b in brokers:
            # Each run on a fresh broker: the queue of the first would weigh on the second.
            runs = []
            for r in range(ROUNDS):
                b.start()
                try:
                    alone = perf(b, *load, "--prefix", "alone")["published_per_sec"]
                finally:
                    b.stop()
                b.start()
                try:
                    stuck = stalled_consumer(b, "stalled-0")
                    try:
                        stalled = perf(b, *load, "--prefix", "stalled")["published_per_sec"]
                    finally:
                        stuck.close()
                finally:
                    b.stop()
                runs.append((alone, stalled))
                log(f"10. stalled consumer | {b.name} round {r + 1}: no consumer {alone:.0f}/s, stalled consumer {stalled:.0f}/s")
            stall[b.name] = (mean([a for a, _ in runs]), mean([s for _, s in runs]))
        title = "10. 256 B, confirms (window 256), into a queue"
        for i, what in [(0, "confirmed msg/s, no consumer"), (1, "confirmed msg/s, its only consumer stalled")]:
            h, q = stall["Hare"][i], stall["RabbitMQ"][i]
            rows.append((title, what, f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
        h, q = (stall["Hare"][1] / stall["Hare"][0], stall["RabbitMQ"][1] / stall["RabbitMQ"][0])
        rows.append((title, "stalled / no consumer", f"{h:.2f}", f"{q:.2f}", ""))

    # 11. A transient flood nobody consumes, under a 200 MiB memory limit on both brokers.
    if want(11):
        flood = {}
        for b in brokers:
            b.start(memory_limit_mib=200)
            try:
                peak = PeakRss(b.pid())
                try:
                    s = perf(b, "--consumers", 0, "--size", 4096, "--confirm", 256, "--duration", DURATION * 3, "--prefix", "flood")
                finally:
                    top = peak.done()
            finally:
                b.stop()
            flood[b.name] = (s["confirmed"] / s["seconds"], top / 1024)
            log(f"11. flood | {b.name}: {flood[b.name][0]:.0f} confirmed msg/s, peak RSS {flood[b.name][1]:.0f} MiB")
        title = f"11. 4 KiB transient, confirms, no consumer, 200 MiB memory limit, {DURATION * 3:.0f} s"
        for i, what, fmt in [(0, "confirmed msg/s over the run", "{:,.0f}"), (1, "peak RSS MiB", "{:.0f}")]:
            h, q = flood["Hare"][i], flood["RabbitMQ"][i]
            rows.append((title, what, fmt.format(h), fmt.format(q), f"{h / q:.2f}"))

    # 12. The cost of statistics: rows 1 and 3 with the management API polled once a second
    # (overview, queues, channels, connections and Prometheus metrics, as a dashboard and a
    # scraper would) against the same runs with nobody asking. Hare only, alternating.
    if want(12):
        hare = brokers[0]
        for title, args in [THROUGHPUT[0], THROUGHPUT[2]]:
            got = {False: [], True: []}
            for r in range(OVERHEAD_ROUNDS):
                for polled in (False, True):
                    hare.start()
                    poller = ApiPoller(hare.http_port) if polled else None
                    try:
                        s = perf(hare, "--duration", DURATION, "--prefix", f"ovh{r}", *args)
                    finally:
                        if poller:
                            poller.stop()
                        hare.stop()
                    got[polled].append(s["consumed_per_sec"])
                    log(f"12. {title} | polled={polled} round {r + 1}: {s['consumed_per_sec']:.0f}/s" + (f", {poller.polls} polls" if poller else ""))
            idle, polled = mean(got[False]), mean(got[True])
            name = "12. " + title.split(". ", 1)[1]
            rows.append((name, "consumed msg/s, API not polled", f"{idle:,.0f}", "", ""))
            rows.append((name, "consumed msg/s, API polled once a second (polled / not)", f"{polled:,.0f}", "", f"{polled / idle:.3f}"))

    # 23-26. Streams over AMQP (bench/streams.py).
    if any(want(r) for r in (23, 24, 25, 26)):
        import streams

        streams.run(brokers, rows, log)

    # 27-32. Streams over RabbitMQ's stream protocol (bench/stream_protocol.py).
    if any(want(r) for r in (27, 28, 29, 30, 31, 32)):
        import stream_protocol

        stream_protocol.run(rows, log)

    # 18-22. MQTT against RabbitMQ's MQTT plugin and mosquitto (bench/mqtt.py).
    sections = []
    if any(want(r) for r in (18, 19, 20, 21, 22)):
        import mqtt

        sections.append(mqtt.run(log))

    # 13-17, 33. Three-node clusters: quorum queues, failover, idle memory, catch-up, a classic
    # queue reached through other nodes (bench/cluster.py).
    if any(want(r) for r in (13, 14, 15, 16, 17, 33)):
        import cluster

        cluster.run(rows, log)

    write(rows, sections)


OVERHEAD_ROUNDS = int(os.environ.get("OVERHEAD_ROUNDS", "4"))
POLLED_PATHS = ["/api/overview", "/api/queues", "/api/channels", "/api/connections", "/metrics"]


class ApiPoller:
    """Asks the management API for what a dashboard shows, once a second, until stopped."""

    def __init__(self, port):
        import threading

        self.port, self.polls, self.done = port, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import base64
        import urllib.request

        auth = "Basic " + base64.b64encode(b"guest:guest").decode()
        while not self.done.wait(1.0):
            for path in POLLED_PATHS:
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": auth})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        r.read()
                    self.polls += 1
                except OSError:
                    pass

    def stop(self):
        self.done.set()
        self.thread.join()


STALLED_CLIENT = """
import sys, pika
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1]), heartbeat=0))
ch = c.channel()
ch.queue_declare(sys.argv[2])
ch.basic_consume(sys.argv[2], lambda *a: None, auto_ack=True)
print("consuming", flush=True)
sys.stdin.read()
"""


class StalledConsumer:
    """A pika consumer in a process of its own, stopped with SIGSTOP once it has subscribed:
    a client paused or stuck, that no longer reads its socket."""

    def __init__(self, broker, queue):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STALLED_CLIENT, str(broker.port), queue],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "consuming":
            raise RuntimeError("the stalled consumer did not subscribe")
        self.proc.send_signal(signal.SIGSTOP)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def stalled_consumer(broker, queue):
    return StalledConsumer(broker, queue)


def write(rows, sections=()):
    """The results file: the Hare / RabbitMQ table, then each section's lines (tables of
    their own, such as MQTT's three brokers)."""
    today = datetime.date.today().isoformat()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    rmq = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True, text=True).stdout
    hare = revision()
    lines = [
        f"# Hare vs RabbitMQ, {today}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB.",
        f"Hare at {hare}; RabbitMQ {rmq} from Debian's packages, default settings.",
        f"Load: `hare perf` against each broker in turn on loopback, {DURATION:.0f} s per run, {ROUNDS} rounds",
        "alternating Hare and RabbitMQ (mean shown). Each run starts its broker afresh.",
    ]
    if rows:
        lines += ["", "| scenario | metric | Hare | RabbitMQ | Hare / RabbitMQ |", "|---|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    for section in sections:
        lines += [""] + section
    suffix = "-rows-" + "-".join(str(r) for r in sorted(ROWS)) if ROWS else ""
    save(f"{today}{suffix}", lines)


if __name__ == "__main__":
    sys.exit(main())
