"""The cluster rows of the benchmark: three Hare nodes against three RabbitMQ nodes, all on
this machine, loaded by the same `hare perf` through one node.

- Row 13: one quorum queue, 1 KiB persistent, confirms (window 256), manual ack prefetch 100.
- Row 14: 100 quorum queues, a producer and a consumer each, the same settings.
- Row 15: failover: a publisher on a node that survives confirms one message at a time; the
  queue's leader node is killed with SIGKILL; the time from the kill to the next confirm.
- Row 17: catch-up: a follower is killed, 1,000,000 messages are confirmed without it, it is
  restarted; the time until the leader's log (as of the restart) is all on it.
- Row 16: memory of idle quorum queues: the three nodes' RSS (settled) before and after 1,000
  quorum queues are declared, per queue.
- Row 33: a classic durable queue declared through node 1, published to through node 2 and
  consumed from through node 3 (1 KiB persistent, confirms (window 256), manual ack prefetch
  100): what crosses the cluster's links for a queue that is not replicated.

RabbitMQ's nodes form a cluster with `rabbitmqctl join_cluster`; its quorum queues have three
members (`x-quorum-initial-group-size`), each led by the node that declared it (the one the
load generator uses). Hare's load goes to its Raft leader, which leads every quorum queue."""
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pika

import compare
from compare import HARE, DURATION, ROUNDS, mean, perf, wait_port, want
from helpers import rss_kib  # (compare put tests/python on the path: shared with the tests)

QUORUM_ARGS = {"x-queue-type": "quorum"}


class HareCluster:
    name = "Hare"
    ports = [5721, 5722, 5723]
    http_ports = [15721, 15722, 15723]
    cluster_ports = [25721, 25722, 25723]

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hare-bench-cluster-")
        # A run's data (gigabytes of Raft log) goes with the run, as compare.Hare's does.
        atexit.register(shutil.rmtree, self.dir, True)
        self.procs = []

    def start(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        secret = os.path.join(self.dir, "secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("bench")
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.cluster_ports)
        self.procs = []
        self.argv = []
        for i in range(3):
            self.argv.append(
                [HARE, "--port", str(self.ports[i]), "--management-port", str(self.http_ports[i]), "--mqtt-port", "0", "--mqtt-ws-port", "0", "--stream-port", "0",
                 "--data-dir", os.path.join(self.dir, f"n{i + 1}"), "--log", "warn", "--node-name", f"n{i + 1}",
                 "--cluster-port", str(self.cluster_ports[i]), "--cluster-seeds", seeds,
                 "--cluster-secret-file", secret])
            log = open(os.path.join(self.dir, f"n{i + 1}.log"), "w")
            self.procs.append(subprocess.Popen(self.argv[i], stdout=log, stderr=subprocess.STDOUT))
        for p in self.ports:
            if not wait_port(p, time.monotonic() + 120):
                raise RuntimeError("a hare node did not start")
        deadline = time.monotonic() + 60
        while self.leader() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no leader")
            time.sleep(0.05)

    def status(self, i):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_ports[i]}/api/hare/cluster")
        req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def leader(self):
        """The index of the leading node, if there is one."""
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                continue
            try:
                s = self.status(i)
            except OSError:
                continue
            if s.get("leader") == s.get("node"):
                return i
        return None

    def load_port(self):
        return self.ports[self.leader()]

    def queue_leader(self, queue):
        return self.leader()

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait()

    def restart(self, i):
        log = open(os.path.join(self.dir, f"n{i + 1}.log"), "a")
        self.procs[i] = subprocess.Popen(self.argv[i], stdout=log, stderr=subprocess.STDOUT)

    def caught_up(self, i, queue, index):
        """Whether node i has the leader's log up to `index` (as the leader sees it)."""
        leader = self.leader()
        if leader is None:
            return False
        name = f"n{i + 1}"
        for m in self.status(leader)["members"]:
            if m["name"] == name:
                return (m.get("matched_index") or 0) >= index
        return False

    def log_index(self, queue):
        return self.status(self.leader())["last_log_index"]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


class RabbitNode(compare.RabbitMQ):
    """One node of the RabbitMQ cluster: its own name, ports and directory."""

    def __init__(self, i):
        super().__init__()
        self.i = i
        self.port = 5731 + i
        self.node = f"harebench{i + 1}@localhost"
        self.dir = os.path.join(tempfile.gettempdir(), f"hare-bench-rabbitmq-cluster-{i + 1}")

    def env(self):
        e = super().env()
        e["RABBITMQ_DIST_PORT"] = str(25731 + self.i)
        return e


class RabbitCluster:
    name = "RabbitMQ"

    def __init__(self):
        self.nodes = [RabbitNode(i) for i in range(3)]

    def ctl(self, node, *argv):
        return subprocess.run(["rabbitmqctl", "-n", node.node, *argv], env=node.env(), capture_output=True,
                              text=True, timeout=300)

    def start(self):
        for n in self.nodes:
            n.start()
        for n in self.nodes[1:]:
            for argv in (["stop_app"], ["join_cluster", self.nodes[0].node], ["start_app"]):
                r = self.ctl(n, *argv)
                if r.returncode != 0:
                    raise RuntimeError(f"rabbitmqctl {' '.join(argv)} on {n.node}: {r.stderr.strip()}")
            if not wait_port(n.port, time.monotonic() + 120):
                raise RuntimeError(f"{n.node} did not come back")

    def load_port(self):
        return self.nodes[0].port

    def queue_leader(self, queue):
        return 0

    def kill(self, i):
        pid = compare.listener_pid(self.nodes[i].port)
        os.kill(pid, signal.SIGKILL)

    def restart(self, i):
        self.nodes[i].start(fresh=False)

    def members(self, queue):
        """rabbitmq-queues quorum_status, as {node: log index}."""
        r = subprocess.run(["rabbitmq-queues", "-n", self.nodes[0].node, "quorum_status", queue, "--formatter", "json"],
                           env=self.nodes[0].env(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return {}
        try:
            rows = json.loads(r.stdout)
        except ValueError:
            return {}
        return {row.get("Node Name"): int(row.get("Log Index") or 0) for row in rows if isinstance(row, dict)}

    def caught_up(self, i, queue, index):
        return self.members(queue).get(self.nodes[i].node, 0) >= index

    def log_index(self, queue):
        return self.members(queue).get(self.nodes[0].node, 0)

    def stop(self):
        for n in self.nodes:
            try:
                n.stop()
            except Exception:  # a killed node has nothing to stop
                pass


class At:
    """A broker handle for `perf`: the load goes to one node's port."""

    def __init__(self, port):
        self.port = port


def declare_quorum(port, queues):
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = c.channel()
    for q in queues:
        ch.queue_declare(q, durable=True, arguments={**QUORUM_ARGS, "x-quorum-initial-group-size": 3})
    c.close()


def failover(cluster):
    """Seconds from SIGKILL of the queue leader's node to the next confirm on a surviving one."""
    leader = cluster.queue_leader("failover")
    survivor_port = [p for i, p in enumerate(ports(cluster)) if i != leader][0]
    declare_quorum(cluster.load_port(), ["failover"])
    confirms = []
    stop = threading.Event()

    def publish():
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", survivor_port, socket_timeout=60))
        ch = c.channel()
        ch.confirm_delivery()
        while not stop.is_set():
            ch.basic_publish("", "failover", b"x" * 1024, pika.BasicProperties(delivery_mode=2))
            confirms.append(time.monotonic())
        c.close()

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while len(confirms) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = time.monotonic()
    cluster.kill(leader)
    deadline = killed + 120
    # Until confirms flow again (a hundred after the kill): stopping at the first one could
    # take a confirm already on its way for the successor's.
    while time.monotonic() < deadline and sum(1 for x in confirms if x > killed) < 100:
        time.sleep(0.005)
    stop.set()
    t.join(timeout=60)
    after = [x for x in confirms if x > killed]
    # The first confirm after the kill may be one already on its way: take the first after
    # the gap (the largest interval between confirms from the kill on).
    if not after:
        return float("nan")
    times = [killed] + after
    gaps = [(b - a, b) for a, b in zip(times, times[1:])]
    longest = max(gaps)
    return longest[1] - killed


def pids(cluster):
    if isinstance(cluster, HareCluster):
        return [p.pid for p in cluster.procs]
    return [compare.listener_pid(n.port) for n in cluster.nodes]


def settled_rss(cluster, deadline_s=120):
    """The nodes' RSS summed, once it changes by under 1 % over two seconds (or at the deadline)."""
    deadline = time.monotonic() + deadline_s
    last = sum(rss_kib(p) for p in pids(cluster))
    while time.monotonic() < deadline:
        time.sleep(2)
        now = sum(rss_kib(p) for p in pids(cluster))
        if abs(now - last) < last / 100:
            return now
        last = now
    return last


IDLE_QUEUES = 1000
CATCH_UP = 1_000_000


def catch_up(cluster):
    """Seconds from the restart of a follower that missed CATCH_UP messages to the leader's
    log being all on it (16 B persistent messages, confirmed, to one quorum queue)."""
    leader = cluster.queue_leader("cu-0")
    follower = [i for i in range(3) if i != leader][-1]
    # Declared while every node is up (so the follower is a member), as perf declares it.
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", cluster.load_port()))
    c.channel().queue_declare("cu-0", durable=True, arguments=QUORUM_ARGS)
    c.close()
    cluster.kill(follower)
    perf(At(cluster.load_port()), "--prefix", "cu", "--quorum", "--persistent", "--confirm", 256, "--producers", 1,
         "--consumers", 0, "--count", CATCH_UP, "--duration", 900, "--keep", timeout=1200)
    index = cluster.log_index("cu-0")
    started = time.monotonic()
    cluster.restart(follower)
    deadline = started + 300
    while time.monotonic() < deadline:
        try:
            if cluster.caught_up(follower, "cu-0", index):
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    return float("nan")


def idle_queue_memory(cluster):
    """KiB of RSS (all three nodes together) per idle quorum queue, at 1,000 queues."""
    before = settled_rss(cluster)
    names = [f"idle{i}" for i in range(IDLE_QUEUES)]
    for i in range(0, IDLE_QUEUES, 100):
        declare_quorum(cluster.load_port(), names[i:i + 100])
    after = settled_rss(cluster)
    return (after - before) / IDLE_QUEUES


def across_nodes(cluster, r):
    """Row 33: (consumed msg/s, confirm p99 ms) of a classic queue on node 1, loaded by a
    producer through node 2 and a consumer through node 3 at once."""
    p = ports(cluster)
    queue = f"across{r}-0"
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", p[0]))
    c.channel().queue_declare(queue, durable=True)
    c.close()
    common = ["--duration", DURATION, "--prefix", f"across{r}", "--size", 1024, "--persistent", "--keep"]
    out = {}

    def load(name, port, *args):
        out[name] = perf(At(port), *common, *args)

    consumer = threading.Thread(target=load, args=("consumer", p[2], "--producers", 0, "--consumers", 1,
                                                   "--ack", "manual", "--prefetch", 100))
    consumer.start()
    load("producer", p[1], "--producers", 1, "--consumers", 0, "--confirm", 256)
    consumer.join()
    return out["consumer"]["consumed_per_sec"], out["producer"]["confirm_latency"]["p99_ms"]


def rounds(clusters, title, measure, rows, log):
    """ROUNDS alternating runs of `measure(cluster, round)` -> (consumed msg/s, confirm p99 ms)
    on fresh clusters; their means as two rows."""
    got = {c.name: [] for c in clusters}
    p99 = {c.name: [] for c in clusters}
    for r in range(ROUNDS):
        for c in clusters:
            c.start()
            try:
                consumed, latency = measure(c, r)
            finally:
                c.stop()
            got[c.name].append(consumed)
            p99[c.name].append(latency)
            log(f"{title} | {c.name} round {r + 1}: consumed {consumed:.0f}/s, confirm p99 {latency:.2f} ms")
    h, q = mean(got["Hare"]), mean(got["RabbitMQ"])
    rows.append((title, "consumed msg/s", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
    h, q = mean(p99["Hare"]), mean(p99["RabbitMQ"])
    rows.append((title, "confirm p99 ms", f"{h:.2f}", f"{q:.2f}", f"{h / q:.2f}"))


def ports(cluster):
    return cluster.ports if isinstance(cluster, HareCluster) else [n.port for n in cluster.nodes]


def run(rows, log):
    clusters = [HareCluster(), RabbitCluster()]
    scenarios = []
    if want(13):
        scenarios.append((13, "13. 3-node cluster, 1 quorum queue, 1 KiB persistent, confirms (window 256), manual ack prefetch 100", 1))
    if want(14):
        scenarios.append((14, "14. 3-node cluster, 100 quorum queues, a producer and consumer each, 1 KiB persistent, confirms (window 256), manual ack prefetch 100", 100))
    for _, title, n in scenarios:
        def throughput(c, r, n=n):
            s = perf(At(c.load_port()), "--duration", DURATION, "--prefix", f"cq{r}", "--size", 1024,
                     "--persistent", "--quorum", "--confirm", 256, "--ack", "manual", "--prefetch", 100,
                     "--queues", n, "--producers", n, "--consumers", n)
            return s["consumed_per_sec"], s["confirm_latency"]["p99_ms"]

        rounds(clusters, title, throughput, rows, log)
    if want(33):
        title = ("33. 3-node cluster, a classic durable queue on node 1, producer through node 2, consumer "
                 "through node 3, 1 KiB persistent, confirms (window 256), manual ack prefetch 100")
        rounds(clusters, title, across_nodes, rows, log)
    # One measurement per broker, each on a fresh cluster: (row, title, metric, measure, digits).
    single = [
        (15, "15. failover: SIGKILL of the queue leader's node to the next confirm on a surviving node",
         "seconds", failover, 3),
        (16, f"16. 3-node cluster, {IDLE_QUEUES:,} idle quorum queues: RSS of the three nodes per queue",
         "KiB", idle_queue_memory, 1),
        (17, f"17. 3-node cluster: a follower that missed {CATCH_UP:,} messages (16 B, persistent) catches up",
         "seconds from its restart", catch_up, 1),
    ]
    for row, title, metric, measure, digits in single:
        if not want(row):
            continue
        got = {}
        for c in clusters:
            c.start()
            try:
                got[c.name] = measure(c)
            finally:
                c.stop()
            log(f"{title} | {c.name}: {got[c.name]:.{digits}f} {metric}")
        h, q = got["Hare"], got["RabbitMQ"]
        rows.append((title, metric, f"{h:.{digits}f}", f"{q:.{digits}f}", f"{h / q:.2f}"))
