"""A three-node cluster on loopback with a quorum queue: confirmed messages survive the loss
of the leader and of a follower, consumers on surviving nodes keep consuming, and a node
that was down catches up. Each test starts its own three nodes; nothing waits a fixed time."""
import os
import signal
import socket
import tempfile
import threading

import pika
import pytest

from conftest import Hare, wait_for
from helpers import free_ports

QUORUM = {"x-queue-type": "quorum"}


class Proxy:
    """A TCP proxy in front of one node's cluster port, on that node's own loopback address:
    it forwards what comes in, and can cut and refuse the connections from chosen source
    addresses (the other nodes connect from theirs), which partitions those links."""

    def __init__(self, ip, target_port):
        self.ip, self.target = ip, target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.blocked = set()
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, (src, _) = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                if src in self.blocked:
                    c.close()
                    continue
            try:
                u = socket.create_connection((self.ip, self.target), timeout=2)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            with self.lock:
                self.conns.append((src, c, u))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def block(self, sources):
        with self.lock:
            self.blocked |= set(sources)
            cut = [x for x in self.conns if x[0] in self.blocked]
            self.conns = [x for x in self.conns if x[0] not in self.blocked]
        for _, c, u in cut:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self):
        with self.lock:
            self.blocked.clear()

    def close(self):
        self.closed = True
        self.block({x[0] for x in self.conns})
        self.sock.close()


class Cluster:
    """Three nodes; with `proxied`, each node's cluster port is on its own loopback address
    (127.0.0.11, .12, .13) behind a Proxy, and the seeds are the proxies."""

    # Tries at starting the nodes: a cluster port found free may be taken (as the source port
    # of some connection) before its node binds it.
    START_TRIES = 3

    def __init__(self, size=3, proxied=False, extra=(), per_node=None):
        self.extra = list(extra)
        # Arguments of node i alone (its own ports for another listener, say).
        self.per_node = per_node or (lambda i: [])
        self.dir = tempfile.mkdtemp(prefix="hare-cluster-")
        self.secret = os.path.join(self.dir, "secret")
        with open(os.open(self.secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("a secret only these nodes share")
        self.proxies = []
        self.nodes = []
        for attempt in range(self.START_TRIES):
            try:
                self._start(size, proxied)
                return
            except AssertionError as e:
                self.stop()
                self.proxies, self.nodes = [], []
                if "Address already in use" not in str(e) or attempt == self.START_TRIES - 1:
                    raise

    def _start(self, size, proxied):
        if proxied:
            self.ips = [f"127.0.0.{11 + i}" for i in range(size)]
            ports = []
            for ip in self.ips:
                s = socket.socket()
                s.bind((ip, 0))
                ports.append(s.getsockname()[1])
                s.close()
            self.proxies = [Proxy(ip, p) for ip, p in zip(self.ips, ports)]
            seeds = ",".join(f"{p.ip}:{p.port}" for p in self.proxies)
            binds = [["--cluster-bind", ip] for ip in self.ips]
        else:
            ports = free_ports(size)
            seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
            binds = [[] for _ in ports]
        for i, p in enumerate(ports):
            self.nodes.append(
                Hare(extra_args=["--node-name", f"n{i + 1}", "--cluster-port", str(p), "--cluster-seeds", seeds,
                                 "--cluster-secret-file", self.secret, *binds[i], *self.extra, *self.per_node(i)])
            )

    def isolate(self, node):
        """Cuts every link between `node` and the others, both ways."""
        i = self.nodes.index(node)
        others = [ip for j, ip in enumerate(self.ips) if j != i]
        self.proxies[i].block(others)
        for j, p in enumerate(self.proxies):
            if j != i:
                p.block([self.ips[i]])

    def heal(self):
        for p in self.proxies:
            p.heal()

    def stop(self):
        for n in self.nodes:
            if n.proc.poll() is None:
                n.stop()
        for p in self.proxies:
            p.close()


# A bound on each test: a publish waiting for a confirm that never comes would wait forever.
TEST_DEADLINE_S = 180


def bounded_cluster(**kw):
    def expired(*_):
        raise AssertionError(f"the test took more than {TEST_DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_DEADLINE_S)
    c = Cluster(**kw)
    try:
        yield c
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        c.stop()


@pytest.fixture
def cluster():
    yield from bounded_cluster()


@pytest.fixture
def proxied_cluster():
    yield from bounded_cluster(proxied=True)


def connect(node):
    return pika.BlockingConnection(node.params(blocked_connection_timeout=30, socket_timeout=30))


def publish_confirmed(node, queue, bodies):
    """Publishes each body with confirms; returns those confirmed (stops at the first failure)."""
    confirmed = []
    c = connect(node)
    try:
        ch = c.channel()
        ch.confirm_delivery()
        for b in bodies:
            ch.basic_publish("", queue, b, pika.BasicProperties(delivery_mode=2))
            confirmed.append(b)
    except (pika.exceptions.AMQPError, OSError):
        pass
    finally:
        if c.is_open:
            c.close()
    return confirmed


def drain(node, queue, expect, timeout=30):
    """Consumes with manual acks until `expect` distinct bodies arrived; returns all received."""
    got = []
    c = connect(node)
    ch = c.channel()
    ch.basic_qos(prefetch_count=100)
    seen = set()

    def on(ch_, m, p, b):
        got.append(b)
        seen.add(b)
        ch_.basic_ack(m.delivery_tag)

    ch.basic_consume(queue, on)
    wait_for(lambda: (c.process_data_events(0.05), len(seen) >= expect)[1], timeout=timeout,
             what=f"{expect} messages from {queue}")
    c.close()
    return got


def leads(node):
    """Whether the node's log says it leads now (it logs each change of its leadership)."""
    log = node.read_log()
    return log.rfind("leads now") > log.rfind("no longer leads")


def leader_of(cluster):
    """The node the others follow, as the logs of the live nodes tell."""
    live = [n for n in cluster.nodes if n.proc.poll() is None]
    leaders = [n for n in live if leads(n)]
    return leaders[0] if len(leaders) == 1 else None


def test_a_quorum_queue_is_on_every_node_and_consumed_from_another(cluster):
    n1, n2, n3 = cluster.nodes
    c = connect(n1)
    c.channel().queue_declare("q1", durable=True, arguments=QUORUM)
    c.close()
    bodies = [f"m{i}".encode() for i in range(300)]
    assert publish_confirmed(n1, "q1", bodies) == bodies
    for n in (n2, n3):
        c = connect(n)
        wait_for(lambda: c.channel().queue_declare("q1", passive=True).method.message_count == 300,
                 what="the queue's count on another node")
        c.close()
    got = drain(n2, "q1", 300)
    assert sorted(got) == sorted(bodies), "each message once, none invented"
    c = connect(n3)
    wait_for(lambda: c.channel().queue_declare("q1", passive=True).method.message_count == 0,
             what="the acks applied on a third node")
    c.close()


def test_quorum_declares_refuse_non_durable_and_exclusive(cluster):
    c = connect(cluster.nodes[0])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().queue_declare("q2", durable=False, arguments=QUORUM)
    assert e.value.reply_code == 406
    assert "invalid property 'non-durable' for queue 'q2' in vhost '/'" in e.value.reply_text
    # RabbitMQ's order: auto-delete, then exclusive, then non-durable.
    for kwargs, prop in [({"durable": True, "auto_delete": True}, "auto-delete"),
                         ({"durable": True, "exclusive": True}, "exclusive-owner"),
                         ({"durable": False, "exclusive": True}, "exclusive-owner")]:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.channel().queue_declare("q2", arguments=QUORUM, **kwargs)
        assert e.value.reply_text == f"PRECONDITION_FAILED - invalid property '{prop}' for queue 'q2' in vhost '/'"
    c.close()


def test_confirmed_messages_survive_killing_the_leader_then_a_follower(cluster):
    n1 = cluster.nodes[0]
    c = connect(n1)
    c.channel().queue_declare("q3", durable=True, arguments=QUORUM)
    c.close()
    confirmed = []
    for cycle in range(2):
        leader = wait_for(lambda: leader_of(cluster), what="a leader")
        batch = [f"c{cycle}-{i}".encode() for i in range(200)]
        survivor = next(n for n in cluster.nodes if n is not leader and n.proc.poll() is None)
        confirmed += publish_confirmed(survivor, "q3", batch)
        # kill -9 of the leader (first cycle) and then of a follower (second), restarted after.
        victim = leader if cycle == 0 else next(n for n in cluster.nodes if n is not leader and n is not survivor)
        victim.kill()
        # The majority goes on: a publisher on a surviving node is confirmed again.
        more = [f"after{cycle}-{i}".encode() for i in range(100)]
        confirmed += publish_confirmed(survivor, "q3", more)
        if cycle == 0:
            # A dead leader's port refuses connections: a survivor stood for election at once
            # rather than at its timer's second try.
            alive = [n for n in cluster.nodes if n is not victim]
            wait_for(lambda: any("stands for election" in n.read_log() for n in alive),
                     what="a survivor standing for election")
        victim._start()
    assert len(confirmed) == 600
    reader = cluster.nodes[2]
    got = drain(reader, "q3", len(set(confirmed)), timeout=60)
    assert set(confirmed) <= set(got), f"lost: {sorted(set(confirmed) - set(got))[:10]}"
    assert set(got) <= set(confirmed), "a message nobody published"
    # The restarted nodes caught up: every node agrees the queue is empty.
    for n in cluster.nodes:
        c = connect(n)
        wait_for(lambda: c.channel().queue_declare("q3", passive=True).method.message_count == 0,
                 timeout=30, what=f"{n.data_dir} to catch up")
        c.close()


def declare(node, queue):
    c = connect(node)
    c.channel().queue_declare(queue, durable=True, arguments=QUORUM)
    c.close()


def count_on(node, queue):
    c = connect(node)
    try:
        return c.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        c.close()


def test_a_partitioned_minority_stops_confirming_and_catches_up_on_heal(proxied_cluster):
    cluster = proxied_cluster
    declare(cluster.nodes[0], "qp")
    leader = wait_for(lambda: leader_of(cluster), what="a leader")
    cluster.isolate(leader)
    # A publisher on the isolated node: its publishes wait, unconfirmed, while it is cut off.
    minority = [f"min-{i}".encode() for i in range(50)]
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("confirmed", publish_confirmed(leader, "qp", minority)),
                         daemon=True)
    t.start()
    # The majority elects a leader of its own and goes on confirming.
    majority_node = next(n for n in cluster.nodes if n is not leader)
    majority = [f"maj-{i}".encode() for i in range(200)]
    assert publish_confirmed(majority_node, "qp", majority) == majority
    assert "confirmed" not in result, "the minority confirmed while cut off from the majority"
    cluster.heal()
    t.join(timeout=60)
    assert result.get("confirmed") == minority, "the minority's publishes are confirmed once healed"
    # Every node agrees, the old leader included, and nothing confirmed is lost.
    for n in cluster.nodes:
        wait_for(lambda: count_on(n, "qp") == 250, timeout=30, what="every node to have all 250")
    got = drain(majority_node, "qp", 250)
    assert set(got) == set(minority) | set(majority)


def test_a_node_that_missed_the_purged_log_catches_up_from_a_snapshot():
    """With a snapshot every 20 entries, the log a killed follower missed is purged on the
    others by the time it comes back: it is sent a snapshot (queues and definitions), and
    then consumes through itself what was confirmed while it was away."""
    for cluster in bounded_cluster(extra=["--cluster-snapshot-every", "20"]):
        leader = wait_for(lambda: leader_of(cluster), what="a leader")
        follower = next(n for n in cluster.nodes if n is not leader)
        declare(leader, "snapped")
        before = [f"before {i}".encode() for i in range(10)]
        assert publish_confirmed(leader, "snapped", before) == before
        follower.kill()
        # One confirm at a time: each publish is a batch of its own, so 200 log entries.
        during = [f"during {i}".encode() for i in range(200)]
        assert publish_confirmed(leader, "snapped", during) == during
        follower.restart()
        wait_for(lambda: "installed a snapshot" in follower.read_log(), timeout=60,
                 what="the follower installing a snapshot")
        got = drain(follower, "snapped", len(before) + len(during), timeout=60)
        assert set(got) == set(before + during)


def test_a_stopped_leader_is_replaced_and_catches_up(cluster):
    declare(cluster.nodes[0], "qs")
    leader = wait_for(lambda: leader_of(cluster), what="a leader")
    others = [n for n in cluster.nodes if n is not leader]
    before = [f"b{i}".encode() for i in range(100)]
    assert publish_confirmed(others[0], "qs", before) == before
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        # Longer than the election timeout: another node takes over.
        wait_for(lambda: any(leads(n) for n in others), timeout=30, what="a new leader")
        during = [f"d{i}".encode() for i in range(100)]
        assert publish_confirmed(others[1], "qs", during) == during
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: count_on(leader, "qs") == 200, timeout=30, what="the stopped node to catch up")
    got = drain(leader, "qs", 200)
    assert set(got) == set(before) | set(during)


def test_a_node_without_the_secret_is_refused_and_a_readable_secret_is_not_used(cluster):
    n1 = cluster.nodes[0]
    declare(n1, "qx")
    seeds = [a for a in n1.extra_args if "," in a][0]
    other = os.path.join(cluster.dir, "other-secret")
    with open(os.open(other, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("not the cluster's secret")
    (port,) = free_ports(1)
    outsider = Hare(extra_args=["--node-name", "intruder", "--cluster-port", str(port), "--cluster-seeds", seeds,
                                "--cluster-secret-file", other])
    try:
        wait_for(lambda: "does not hold the cluster's secret" in outsider.read_log(), what="the outsider to be refused")
        wait_for(lambda: "refused a peer" in n1.read_log(), what="the refusal in a node's log")
        # It joined nothing: the cluster's queue is not on it.
        c = connect(outsider)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.channel().queue_declare("qx", passive=True)
        assert e.value.reply_code == 404
        c.close()
    finally:
        outsider.stop()
    readable = os.path.join(cluster.dir, "readable-secret")
    with open(os.open(readable, os.O_WRONLY | os.O_CREAT, 0o644), "w") as f:
        f.write("x")
    os.chmod(readable, 0o644)
    with pytest.raises(AssertionError) as e:
        Hare(extra_args=["--cluster-port", str(port), "--cluster-secret-file", readable])
    assert "must be accessible by its owner only" in str(e.value)


def test_basic_get_goes_through_the_log(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qg")
    assert publish_confirmed(n1, "qg", [b"a", b"b", b"c"]) == [b"a", b"b", b"c"]
    c2 = connect(n2)
    ch2 = c2.channel()
    m, props, body = ch2.basic_get("qg")
    assert (body, m.redelivered, m.message_count) == (b"a", False, 2)
    # Requeued: the next get has it again, redelivered, with its delivery count.
    ch2.basic_reject(m.delivery_tag, requeue=True)
    m, props, body = ch2.basic_get("qg")
    assert (body, m.redelivered, props.headers.get("x-delivery-count")) == (b"a", True, 1)
    ch2.basic_ack(m.delivery_tag)
    c3 = connect(n3)
    ch3 = c3.channel()
    assert ch3.basic_get("qg", auto_ack=True)[2] == b"b"
    assert ch3.basic_get("qg", auto_ack=True)[2] == b"c"
    assert ch3.basic_get("qg", auto_ack=True) == (None, None, None)
    c3.close()
    c2.close()
    wait_for(lambda: count_on(n1, "qg") == 0, what="the gets applied on the first node")


def http(node, method, path, body=None):
    import base64
    import json
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_exchanges_bindings_users_and_permissions_are_the_clusters(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n2, "qd")
    c = connect(n1)
    ch = c.channel()
    ch.exchange_declare("ex", "topic", durable=True)
    ch.queue_bind("qd", "ex", "a.*")
    c.close()
    # Published on a third node through the exchange and binding made on the first.
    c = connect(n3)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("ex", "a.b", b"routed", pika.BasicProperties(delivery_mode=2))
    # The same exchange with another type is refused on any node, with RabbitMQ's text.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().exchange_declare("ex", "direct", durable=True)
    assert e.value.reply_code == 406 and "inequivalent arg 'type' for exchange 'ex'" in e.value.reply_text
    c.close()
    wait_for(lambda: count_on(n1, "qd") == 1, what="the routed message on the first node")
    # Users, vhosts and permissions made through one node's API log in on another.
    assert http(n2, "PUT", "/api/vhosts/v2") == 201
    assert http(n2, "PUT", "/api/users/u1", {"password": "p1", "tags": ""}) == 201
    assert http(n2, "PUT", "/api/permissions/v2/u1", {"configure": ".*", "write": ".*", "read": ".*"}) == 201
    creds = pika.PlainCredentials("u1", "p1")
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", n3.port, "v2", creds))
    c.channel().exchange_declare("in-v2", "fanout")
    c.close()
    # Deleted through the third node: gone on the first.
    assert http(n3, "DELETE", "/api/exchanges/%2F/ex") == 204
    c = connect(n1)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().exchange_declare("ex", passive=True)
    assert e.value.reply_code == 404
    c.close()
    assert http(n1, "GET", "/api/exchanges/v2/in-v2") == 200


def ctl(node, *argv):
    import subprocess
    from conftest import HARE_BIN
    r = subprocess.run([HARE_BIN, "ctl", "--url", f"http://127.0.0.1:{node.http_port}", *argv],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    return r.stdout


def status(node):
    import json
    return json.loads(ctl(node, "--format", "json", "cluster", "status"))


def test_nodes_join_and_are_forgotten_at_run_time(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qj")
    assert publish_confirmed(n1, "qj", [b"before-join"]) == [b"before-join"]
    text = ctl(n1, "cluster", "status")
    assert "leader: n" in text and text.count("127.0.0.1:") >= 3
    # A fourth node whose seeds are a formed cluster asks to be taken in, and catches up.
    seeds = [a for a in n1.extra_args if "," in a][0]
    (port,) = free_ports(1)
    n4 = Hare(extra_args=["--node-name", "n4", "--cluster-port", str(port), "--cluster-seeds", seeds,
                          "--cluster-secret-file", cluster.secret])
    cluster.nodes.append(n4)
    wait_for(lambda: any(m["name"] == "n4" and m["voter"] for m in status(n1)["members"]), timeout=30,
             what="n4 a voter")
    wait_for(lambda: count_on(n4, "qj") == 1, timeout=30, what="n4 to have the queue and its message")
    nodes = json_get(n2, "/api/nodes")
    assert sorted(n["name"] for n in nodes) == ["n1", "n2", "n3", "n4"]
    # A fifth node that found no cluster (its only other seed answers nothing) joins on request.
    (dead, port5) = free_ports(2)
    n5 = Hare(extra_args=["--node-name", "n5", "--cluster-port", str(port5), "--cluster-seeds",
                          f"127.0.0.1:{dead},127.0.0.1:{port5}", "--cluster-secret-file", cluster.secret])
    cluster.nodes.append(n5)
    first_seed = seeds.split(",")[0]
    ctl(n5, "cluster", "join", first_seed)
    wait_for(lambda: len(status(n5)["members"]) == 5, timeout=30, what="n5 to see five members")
    wait_for(lambda: count_on(n5, "qj") == 1, timeout=30, what="n5 to catch up")
    # Forgotten: stopped nodes leave the membership, and the three go on.
    n4.stop()
    n5.stop()
    ctl(n1, "cluster", "forget", "n4")
    ctl(n2, "cluster", "forget", "n5")
    assert sorted(m["name"] for m in status(n3)["members"]) == ["n1", "n2", "n3"]
    assert publish_confirmed(n3, "qj", [b"after-forget"]) == [b"after-forget"]
    assert sorted(drain(n2, "qj", 2)) == [b"after-forget", b"before-join"]


def json_get(node, path):
    import base64
    import json
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def test_a_quorum_queue_deleted_through_the_api_or_with_its_vhost_goes_on_every_node(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qdel")
    wait_for(lambda: http(n3, "GET", "/api/queues/%2F/qdel") == 200, what="the queue on a third node")
    assert http(n2, "DELETE", "/api/queues/%2F/qdel") == 204
    for n in (n1, n2, n3):
        wait_for(lambda: http(n, "GET", "/api/queues/%2F/qdel") == 404, what=f"the queue gone on {n.port}")
    assert "qdel in vhost '/'" not in status(n1)["quorum_queues"]
    # A transaction's publish to a quorum queue is applied on this node by commit-ok.
    # (The user who makes a vhost gets every permission in it, as in RabbitMQ.)
    assert http(n1, "PUT", "/api/vhosts/v3") == 201
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", n2.port, "v3"))
    ch = c.channel()
    ch.queue_declare("qv", durable=True, arguments=QUORUM)
    ch.tx_select()
    ch.basic_publish("", "qv", b"in-a-transaction", pika.BasicProperties(delivery_mode=2))
    ch.tx_commit()
    assert ch.queue_declare("qv", passive=True).method.message_count == 1
    c.close()
    # The vhost goes through a third node: its quorum queue leaves the replicated state.
    assert http(n3, "DELETE", "/api/vhosts/v3") == 204
    wait_for(lambda: "qv in vhost 'v3'" not in status(n1)["quorum_queues"], what="the vhost's queue gone")
    assert http(n1, "PUT", "/api/vhosts/v3") == 201
    assert http(n2, "GET", "/api/queues/v3/qv") == 404


def test_nodes_speak_mutual_tls_to_each_other_when_given_a_certificate():
    import ssl
    from test_tls import make_cert, openssl
    d = tempfile.mkdtemp(prefix="hare-cluster-tls-")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=Hare test CA",
            "-days", "2", "-out", "ca.pem", cwd=d)
    make_cert(d, "node", "localhost", server=True)
    make_cert(d, "other", "localhost", server=True)
    tls = ["--tls-cert", f"{d}/node.pem", "--tls-key", f"{d}/node.key", "--tls-ca", f"{d}/ca.pem",
           "--tls-port", "0", "--management-tls-port", "0"]
    for c in bounded_cluster(extra=tls):
        n1, n2, n3 = c.nodes
        assert "nodes speak TLS to each other" in n1.read_log()
        declare(n1, "qtls")
        assert publish_confirmed(n2, "qtls", [b"over-tls"]) == [b"over-tls"]
        assert drain(n3, "qtls", 1) == [b"over-tls"]
        port = int(c.nodes[0].extra_args[c.nodes[0].extra_args.index("--cluster-port") + 1])
        # Plain TCP gets no cluster handshake: the node waits for a TLS client hello.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"HARECL01" + bytes([2]) + b"n9" + bytes(32))
            raw.settimeout(10)
            try:
                answer = raw.recv(64)
            except (ConnectionResetError, socket.timeout):
                answer = b""
            assert not answer.startswith(b"HARECL01")
        wait_for(lambda: "refused a peer" in n1.read_log(), what="the plain peer refused and logged")
        # TLS with a certificate of the CA completes; one the CA did not sign is refused.
        ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")
        ctx.load_cert_chain(f"{d}/other.pem", f"{d}/other.key")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                assert t.version() == "TLSv1.3"
        stranger = tempfile.mkdtemp(prefix="hare-stranger-")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "s.key", "-subj", "/CN=stranger",
                "-days", "2", "-out", "s.pem", cwd=stranger)
        ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")
        ctx.load_cert_chain(f"{stranger}/s.pem", f"{stranger}/s.key")
        def refused():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                        # TLS 1.3: the server's verdict on the client's certificate comes after
                        # the client's side of the handshake, as an alert or a closed socket.
                        t.sendall(b"HARECL01")
                        return t.recv(64) == b""
            except (ssl.SSLError, OSError):
                return True

        assert refused(), "a certificate the CA did not sign was accepted"



def test_a_no_ack_consumer_gets_everything_a_prefetch_window_at_a_time(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qna")
    bodies = [f"m{i}".encode() for i in range(3000)]
    assert len(publish_confirmed(n1, "qna", bodies)) == 3000
    got = []
    c = connect(n2)
    ch = c.channel()
    ch.basic_consume("qna", lambda ch_, m, p, b: got.append(b), auto_ack=True)
    # More than the 2,000 a no-ack consumer may hold unsettled: the rest comes as the first
    # are settled once written out.
    wait_for(lambda: (c.process_data_events(0.05), len(got) >= 3000)[1], timeout=60, what="3000 no-ack deliveries")
    assert sorted(got) == sorted(bodies)
    c.close()
    for n in (n1, n3):
        wait_for(lambda: json_get(n, "/api/queues/%2F/qna").get("messages") == 0, what="nothing left or unsettled")


def test_the_raft_log_is_sealed_with_the_encryption_key_and_read_back_after_a_crash():
    d = tempfile.mkdtemp(prefix="hare-cluster-key-")
    key = os.path.join(d, "key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    secret = b"TOP-SECRET-BODY-7f3a"
    for c in bounded_cluster(extra=["--encryption-key-file", key]):
        n1, n2, n3 = c.nodes
        declare(n1, "qenc")
        assert publish_confirmed(n1, "qenc", [secret]) == [secret]
        wait_for(lambda: count_on(n3, "qenc") == 1, what="the message on a third node")
        # A follower crashes and reads its sealed log back when it starts again.
        follower = next(n for n in (n2, n3) if not leads(n))
        follower.kill()
        assert publish_confirmed(n1, "qenc", [b"while-it-was-down"]) == [b"while-it-was-down"]
        follower._start()
        wait_for(lambda: count_on(follower, "qenc") == 2, timeout=60, what="the follower caught up")
        # No file of any node's cluster directory holds the body in the clear.
        for n in c.nodes:
            for root, _, files in os.walk(os.path.join(n.data_dir, "cluster")):
                for name in files:
                    with open(os.path.join(root, name), "rb") as f:
                        assert secret not in f.read(), f"{name} holds the message in the clear"
        assert sorted(drain(follower, "qenc", 2)) == sorted([secret, b"while-it-was-down"])


def test_policies_are_the_clusters(cluster):
    n1, n2, n3 = cluster.nodes
    body = {"pattern": "^pol\\.", "definition": {"alternate-exchange": "pol.ae"}, "apply-to": "exchanges"}
    assert http(n1, "PUT", "/api/policies/%2F/pol", body) == 201
    for n in (n1, n2, n3):
        wait_for(lambda: http(n, "GET", "/api/policies/%2F/pol") == 200, what=f"the policy on {n.port}")
    # An exchange declared on another node gets it there.
    c = connect(n3)
    ch = c.channel()
    ch.exchange_declare("pol.x", "direct")
    c.close()
    wait_for(lambda: json_get(n2, "/api/exchanges/%2F/pol.x").get("policy") == "pol", timeout=30,
             what="the exchange's policy on a second node")
    assert http(n2, "DELETE", "/api/policies/%2F/pol") == 204
    for n in (n1, n2, n3):
        wait_for(lambda: http(n, "GET", "/api/policies/%2F/pol") == 404, what=f"the policy gone on {n.port}")
    assert "policy" not in json_get(n1, "/api/exchanges/%2F/pol.x")


def test_a_policy_applies_to_a_quorum_queue_on_every_node(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qpol")
    assert len(publish_confirmed(n1, "qpol", [b"%d" % i for i in range(5)])) == 5
    # Lowered through another node: every node's queue drops from the head to the limit.
    body = {"pattern": "^qpol$", "definition": {"max-length": 2}, "apply-to": "queues"}
    assert http(n2, "PUT", "/api/policies/%2F/qpol-limit", body) == 201
    for n in (n1, n2, n3):
        wait_for(lambda: count_on(n, "qpol") == 2, timeout=30, what=f"the limit applied on {n.port}")
    assert json_get(n3, "/api/queues/%2F/qpol")["policy"] == "qpol-limit"
    # With reject-publish, a publish past the limit is refused (nacked), on any node.
    body["definition"] = {"max-length": 2, "overflow": "reject-publish"}
    assert http(n2, "PUT", "/api/policies/%2F/qpol-limit", body) == 204
    wait_for(lambda: json_get(n3, "/api/queues/%2F/qpol")["effective_policy_definition"].get("overflow")
             == "reject-publish", timeout=30, what="the new policy on the third node")
    assert publish_confirmed(n3, "qpol", [b"over"]) == []
    # Cleared: no limit again.
    assert http(n1, "DELETE", "/api/policies/%2F/qpol-limit") == 204
    wait_for(lambda: json_get(n2, "/api/queues/%2F/qpol")["policy"] is None, timeout=30, what="the policy cleared")
    assert len(publish_confirmed(n2, "qpol", [b"a", b"b"])) == 2
    wait_for(lambda: count_on(n1, "qpol") == 4, timeout=30, what="four messages")


def test_an_alarm_on_one_member_blocks_publishers_on_every_node(cluster):
    """RabbitMQ's alarms are cluster-wide: a member short of memory blocks every node's
    publishers, and the cluster's status, /api/nodes and the health check show whose it is."""
    n1, n2, n3 = cluster.nodes
    declare(n1, "qa")
    assert http(n1, "GET", "/api/health/checks/alarms") == 200
    # n2 starts again with a memory limit no process meets: an alarm on n2 alone.
    n2.extra_args += ["--memory-limit", "1"]
    n2.restart()
    wait_for(lambda: any(m["name"] == "n2" and m["alarms"] == ["memory"] for m in status(n1)["members"]),
             timeout=30, what="n1 to hear of n2's memory alarm")
    wait_for(lambda: "alarm: memory alarm on node n2" in ctl(n3, "cluster", "status"), timeout=30,
             what="n3 to hear of it too")
    # Every node, leader or not, sees which members answer it.
    for n in cluster.nodes:
        wait_for(lambda: all(m["reachable"] for m in status(n)["members"]), timeout=30,
                 what=f"{n.data_dir} to reach every member")
    nodes = {n["name"]: n for n in json_get(n1, "/api/nodes")}
    assert nodes["n2"]["mem_alarm"] and not nodes["n2"]["disk_free_alarm"]
    assert not nodes["n1"]["mem_alarm"]
    assert http(n1, "GET", "/api/health/checks/alarms") == 503
    assert http(n1, "GET", "/api/health/checks/local-alarms") == 200
    # A publisher on n1 is blocked, in RabbitMQ's words.
    c = connect(n1)
    events = []
    c.add_on_connection_blocked_callback(lambda conn, frame: events.append(frame.method.reason))
    c.add_on_connection_unblocked_callback(lambda conn, frame: events.append("unblocked"))
    ch = c.channel()
    ch.basic_publish("", "qa", b"while-blocked", pika.BasicProperties(delivery_mode=2))
    wait_for(lambda: c.process_data_events(time_limit=0.02) or events, timeout=30, what="connection.blocked on n1")
    assert events == ["low on memory"]
    # n2 without the limit: the alarm clears on every node and the publisher goes on.
    n2.extra_args = n2.extra_args[:-2]
    n2.restart()
    wait_for(lambda: c.process_data_events(time_limit=0.02) or "unblocked" in events, timeout=30,
             what="connection.unblocked on n1")
    ch.confirm_delivery()
    ch.basic_publish("", "qa", b"after", pika.BasicProperties(delivery_mode=2))
    c.close()
    assert sorted(drain(n3, "qa", 2)) == [b"after", b"while-blocked"]
    assert "memory alarm on node n2: publishers here are blocked too" in n1.read_log()


def test_an_imported_file_and_its_shovel_are_the_clusters(cluster):
    """POST /api/definitions on one node: users, vhosts, permissions, policies, exchanges,
    quorum queues, classic queues (held by that node), their bindings and shovels are the
    cluster's. The shovel runs once, on the leader, is listed by every node, and moves to the
    next leader when its node is killed."""
    n1, n2, n3 = cluster.nodes
    defs = {
        "users": [{"name": "imp", "password_hash": "", "tags": "administrator"}],
        "vhosts": [{"name": "iv"}],
        "permissions": [{"user": "guest", "vhost": "iv", "configure": ".*", "write": ".*", "read": ".*"},
                        {"user": "imp", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": "/", "name": "cap", "pattern": "^capped$", "apply-to": "queues",
                      "definition": {"max-length": 5}, "priority": 0}],
        "exchanges": [{"name": "ix", "vhost": "/", "type": "direct", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}}],
        "queues": [{"name": name, "vhost": "/", "durable": True, "auto_delete": False,
                    "arguments": {"x-queue-type": "quorum"}} for name in ("src", "dst", "capped")]
                  + [{"name": "classic-here", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}],
        "bindings": [{"source": "ix", "vhost": "/", "destination": "src", "destination_type": "queue",
                      "routing_key": "k", "arguments": {}},
                     {"source": "ix", "vhost": "/", "destination": "classic-here", "destination_type": "queue",
                      "routing_key": "k", "arguments": {}}],
        "parameters": [{"component": "shovel", "vhost": "/", "name": "mover",
                        "value": {"src-uri": "amqp://", "src-queue": "src", "dest-uri": "amqp://",
                                  "dest-queue": "dst"}}],
    }
    assert http(n1, "POST", "/api/definitions", defs) == 204
    # Every replicated definition on the other nodes.
    for n in (n2, n3):
        assert http(n, "GET", "/api/users/imp") == 200
        assert http(n, "GET", "/api/exchanges/iv/amq.direct") == 200
        assert http(n, "GET", "/api/policies/%2F/cap") == 200
        assert http(n, "GET", "/api/parameters/shovel/%2F/mover") == 200
        for q in ("src", "dst", "capped"):
            assert http(n, "GET", f"/api/queues/%2F/{q}") == 200
        assert json_get(n, "/api/queues/%2F/classic-here")["node"] == "n1"
    assert json_get(n1, "/api/queues/%2F/classic-here")["node"] == "n1"
    # The policy applies to the quorum queue on every node.
    assert publish_confirmed(n3, "capped", [str(i).encode() for i in range(8)])
    wait_for(lambda: count_on(n2, "capped") == 5, timeout=30, what="the imported max-length on n2")

    def listed(node):
        return [s for s in json_get(node, "/api/shovels") if s["name"] == "mover"]

    leader = wait_for(lambda: leader_of(cluster), what="a leader")
    leader_name = f"n{cluster.nodes.index(leader) + 1}"
    # Listed once by every node, as running on the leader.
    for n in cluster.nodes:
        wait_for(lambda: [(s["node"], s["state"]) for s in listed(n)] == [(leader_name, "running")], timeout=30,
                 what=f"the shovel running on {leader_name}, as {n.data_dir} lists it")
    # Published through the replicated binding on another node: moved once, not once per node.
    c = connect(n3)
    ch = c.channel()
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("ix", "k", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    c.close()
    wait_for(lambda: count_on(n2, "dst") == 100, timeout=30, what="the hundred moved")
    # Routed on n3 to the classic queue n1 holds, through the replicated binding.
    wait_for(lambda: count_on(n1, "classic-here") == 100, what="the hundred in the classic queue")
    # The leader dies: the next one runs the shovel, and what is published meanwhile moves.
    leader.kill()
    survivors = [n for n in cluster.nodes if n is not leader]
    assert publish_confirmed(survivors[0], "src", [f"late{i}".encode() for i in range(50)])
    got = drain(survivors[1], "dst", 150, timeout=60)
    assert set(got) == {f"m{i}".encode() for i in range(100)} | {f"late{i}".encode() for i in range(50)}
    new_leader = wait_for(lambda: leader_of(cluster), what="a new leader")
    new_name = f"n{cluster.nodes.index(new_leader) + 1}"
    wait_for(lambda: [(s["node"], s["state"]) for s in listed(survivors[0])] == [(new_name, "running")], timeout=30,
             what="the shovel listed as running on the new leader")
    # A restart is asked of the node that runs it; another names that node.
    follower = next(n for n in survivors if n is not new_leader)
    assert http(follower, "DELETE", "/api/shovels/vhost/%2F/mover/restart") == 400
    assert http(new_leader, "DELETE", "/api/shovels/vhost/%2F/mover/restart") == 204
    # Deleted through a follower: it stops on the leader, and no node lists it.
    assert http(follower, "DELETE", "/api/shovels/vhost/%2F/mover") == 204
    for n in survivors:
        wait_for(lambda: listed(n) == [], timeout=30, what="the shovel gone from every list")
