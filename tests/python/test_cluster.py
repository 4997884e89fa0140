"""A three-node cluster on loopback with a quorum queue: confirmed messages survive the loss
of the leader and of a follower, consumers on surviving nodes keep consuming, and a node
that was down catches up. Each test starts its own three nodes; nothing waits a fixed time."""
import os
import signal
import socket
import tempfile

import pika
import pytest

from conftest import Hare, wait_for

QUORUM = {"x-queue-type": "quorum"}


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, size=3):
        self.dir = tempfile.mkdtemp(prefix="hare-cluster-")
        self.secret = os.path.join(self.dir, "secret")
        with open(os.open(self.secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("a secret only these nodes share")
        ports = free_ports(size)
        seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.nodes = [
            Hare(extra_args=["--node-name", f"n{i + 1}", "--cluster-port", str(p), "--cluster-seeds", seeds,
                             "--cluster-secret-file", self.secret])
            for i, p in enumerate(ports)
        ]

    def stop(self):
        for n in self.nodes:
            if n.proc.poll() is None:
                n.stop()


# A bound on each test: a publish waiting for a confirm that never comes would wait forever.
TEST_DEADLINE_S = 180


@pytest.fixture
def cluster():
    def expired(*_):
        raise AssertionError(f"the test took more than {TEST_DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_DEADLINE_S)
    c = Cluster()
    try:
        yield c
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        c.stop()


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
