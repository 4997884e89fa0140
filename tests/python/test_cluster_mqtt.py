"""MQTT in a three-node cluster: a subscription made through one node hears publishers on
every node (MQTT and AMQP alike), as a RabbitMQ cluster's MQTT plugin does; an unsubscribe
is the cluster's too. The cluster is started once for the module."""
import time

import pytest

from conftest import wait_for
from helpers import free_ports
from test_cluster import bounded_cluster, connect, json_get
from test_mqtt import Client


@pytest.fixture(scope="module")
def shared():
    ports = free_ports(3)

    def mqtt(i):
        return ["--mqtt-port", str(ports[i])]

    for c in bounded_cluster(per_node=mqtt):
        for i, n in enumerate(c.nodes):
            n.mqtt_port = ports[i]
            wait_for(lambda n=n: "MQTT listening" in n.read_log(), what="the MQTT listener")
        yield c


def bound_on(node, queue, key):
    """Whether `node` routes `key` from amq.topic to `queue`."""
    rows = json_get(node, "/api/bindings/%2F")
    return any(r["source"] == "amq.topic" and r["destination"] == queue and r["routing_key"] == key for r in rows)


def test_a_subscription_hears_publishers_on_every_node_until_it_unsubscribes(shared):
    n1, n2, n3 = shared.nodes
    sub = Client(n1, "cluster-sub", clean=True)
    pub = Client(n3, "cluster-pub")
    try:
        assert [int(getattr(c, "value", c)) for c in sub.subscribe("dev/+/temp", qos=1)] == [1]
        sub.subscribe("marker", qos=1)
        queue = "mqtt-subscription-cluster-subqos1"
        for n in (n2, n3):
            wait_for(lambda n=n: bound_on(n, queue, "dev.*.temp"), what="the subscription's binding on every node")
        c = connect(n2)
        c.channel().basic_publish("amq.topic", "dev.a.temp", b"from amqp on n2")
        c.close()
        pub.publish("dev/b/temp", b"from mqtt on n3", qos=1)
        got = sub.wait(2, timeout=30)
        assert sorted((m.topic, m.payload) for m in got) == [
            ("dev/a/temp", b"from amqp on n2"), ("dev/b/temp", b"from mqtt on n3")]

        sub.c.unsubscribe("dev/+/temp")
        for n in (n1, n2, n3):
            wait_for(lambda n=n: not bound_on(n, queue, "dev.*.temp"), what="the binding gone from every node")
        pub.publish("dev/c/temp", b"unheard", qos=1)
        pub.publish("marker", b"after", qos=1)
        got = sub.wait(3, timeout=30)
        assert got[-1].payload == b"after"
        assert b"unheard" not in [m.payload for m in got]
    finally:
        sub.close()
        pub.close()


def test_a_session_made_again_after_a_clean_start_is_heard_from_other_nodes(shared):
    n1, n2, _ = shared.nodes
    queue = "mqtt-subscription-again-subqos1"
    for round_ in range(2):
        # A persistent session, then a clean start of the same client id: its queue is
        # deleted and made again at once, before the node's reconciler has looked.
        sub = Client(n1, "again-sub", clean=round_ == 1)
        try:
            sub.subscribe("again/topic", qos=1)
            wait_for(lambda: bound_on(n2, queue, "again.topic"), what="the binding on another node")
            # Heard from n2 for three seconds: past the reconciler's looks (once a second),
            # which once ended the new queue's face there with the old queue's placement.
            c = connect(n2)
            ch = c.channel()
            start, i = time.monotonic(), 0
            while time.monotonic() - start < 3 and i < 10_000:
                body = f"round {round_} #{i}".encode()
                ch.basic_publish("amq.topic", "again.topic", body)
                wait_for(lambda: sub.messages and sub.messages[-1].payload == body, timeout=10,
                         what=f"message {i} of round {round_} through n2")
                i += 1
            c.close()
        finally:
            sub.close()
