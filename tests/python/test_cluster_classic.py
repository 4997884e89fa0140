"""Classic queues of a three-node cluster: a queue lives on the node that declared it and is
the same queue from every node (publish, consume, get, bind, purge, delete through any of
them); when its node dies, its consumers elsewhere are cancelled and publishes to it are
nacked. The cluster is started once for the module, except for the test that kills a node."""
import signal
import threading

import pika
import pytest

from conftest import wait_for
from test_cluster import QUORUM, bounded_cluster, connect, http, json_get, leader_of, publish_confirmed


@pytest.fixture(scope="module")
def shared():
    yield from bounded_cluster()


def count_on(node, queue):
    """(ready, consumers) as a passive declare through `node` answers."""
    c = connect(node)
    try:
        m = c.channel().queue_declare(queue, passive=True).method
        return m.message_count, m.consumer_count
    finally:
        c.close()


def missing_on(node, queue):
    c = connect(node)
    try:
        c.channel().queue_declare(queue, passive=True)
        return False
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code == 404
    finally:
        if c.is_open:
            c.close()


def consume(node, queue, expect, timeout=30, ack=True, until=None):
    """Consumes until `expect` messages arrived (or, with `until`, that body); returns their
    bodies."""
    got = []
    c = connect(node)
    ch = c.channel()
    ch.basic_qos(prefetch_count=50)

    def on(ch_, m, p, b):
        got.append(b)
        if ack:
            ch_.basic_ack(m.delivery_tag)

    ch.basic_consume(queue, on)
    done = (lambda: until in got) if until is not None else (lambda: len(got) >= expect)
    wait_for(lambda: (c.process_data_events(0.05), done())[1], timeout=timeout,
             what=f"{expect} messages from {queue} through {node.port}")
    c.close()
    return got


def test_a_queue_declared_on_one_node_is_published_to_and_consumed_from_the_others(shared):
    n1, n2, n3 = shared.nodes
    c = connect(n1)
    assert c.channel().queue_declare("work", durable=True).method.queue == "work"
    c.close()
    bodies = [f"m{i}".encode() for i in range(200)]
    assert publish_confirmed(n2, "work", bodies) == bodies
    # A declare through any node counts what the home holds now (confirmed: enqueued there).
    for n in (n1, n2, n3):
        assert count_on(n, "work") == (200, 0)
        # The management API of every node lists it on its home, with its messages (a face's
        # counts there are at most a second old).
        q = wait_for(lambda: (lambda q: q if q["messages"] == 200 else None)(json_get(n, "/api/queues/%2F/work")),
                     what=f"200 messages listed by {n.http_port}")
        assert (q["node"], q["type"], q["durable"]) == ("n1", "classic", True)
    got = consume(n3, "work", 200)
    assert sorted(got) == sorted(bodies) and len(got) == 200
    wait_for(lambda: count_on(n1, "work") == (0, 0), what="the acks applied on the home")
    # A declare of the same name through another node is the same queue, checked as one.
    c = connect(n2)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().queue_declare("work", durable=False)
    assert e.value.reply_code == 406
    assert "inequivalent arg 'durable' for queue 'work'" in e.value.reply_text
    c.close()


def test_a_queue_put_through_the_api_is_the_cluster_s(shared):
    n1, n2, n3 = shared.nodes
    assert http(n2, "PUT", "/api/queues/%2F/api-made", {"durable": True}) == 201
    assert publish_confirmed(n3, "api-made", [b"via n3"]) == [b"via n3"]
    assert count_on(n1, "api-made") == (1, 0)
    assert json_get(n1, "/api/queues/%2F/api-made")["node"] == "n2"
    assert http(n1, "DELETE", "/api/queues/%2F/api-made") == 204
    for n in (n1, n2, n3):
        wait_for(lambda: missing_on(n, "api-made"), what=f"the queue gone through {n.port}")


def test_declares_of_one_name_through_every_node_at_once_make_one_queue(shared):
    nodes = shared.nodes
    errors = []

    def declare(node):
        try:
            c = connect(node)
            c.channel().queue_declare("raced", durable=True)
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=declare, args=(n,)) for n in nodes for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    for i, n in enumerate(nodes):
        assert publish_confirmed(n, "raced", [f"from{i}".encode()]) == [f"from{i}".encode()]
    got = consume(nodes[1], "raced", 3)
    assert sorted(got) == [b"from0", b"from1", b"from2"]


def test_bindings_gets_purges_and_deletes_through_any_node(shared):
    n1, n2, n3 = shared.nodes
    c2 = connect(n2)
    ch2 = c2.channel()
    ch2.queue_declare("events", durable=False, auto_delete=False)
    # Bound through another node; routed from a third.
    c3 = connect(n3)
    ch3 = c3.channel()
    ch3.queue_bind("events", "amq.topic", "sensor.*")
    c1 = connect(n1)
    ch1 = c1.channel()
    ch1.confirm_delivery()
    for i in range(5):
        ch1.basic_publish("amq.topic", "sensor.t", f"e{i}".encode())
    ch1.basic_publish("amq.topic", "other.t", b"not routed here")
    # basic.get through a node that is not the home: ack, and a requeue that comes back.
    m, _, body = ch3.basic_get("events")
    assert (body, m.redelivered, m.message_count) == (b"e0", False, 4)
    ch3.basic_nack(m.delivery_tag, requeue=True)
    m, _, body = ch3.basic_get("events")
    assert (body, m.redelivered) == (b"e0", True)
    ch3.basic_ack(m.delivery_tag)
    m, _, body = ch1.basic_get("events", auto_ack=True)
    assert body == b"e1"
    # The home's checks answer a delete asked elsewhere.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        connect(n1).channel().queue_delete("events", if_empty=True)
    assert e.value.reply_code == 406 and "queue 'events' in vhost '/' not empty" in e.value.reply_text
    ch1.queue_purge("events")
    wait_for(lambda: count_on(n2, "events") == (0, 0), what="the purge applied on the home")
    ch1.queue_delete("events")
    for n in (n1, n2, n3):
        wait_for(lambda: missing_on(n, "events"), what=f"the queue gone through {n.port}")
    for c in (c1, c2, c3):
        c.close()


def test_an_auto_delete_queue_goes_when_its_last_consumer_elsewhere_cancels(shared):
    n1, n2, n3 = shared.nodes
    c = connect(n1)
    c.channel().queue_declare("transient", auto_delete=True)
    c.close()
    assert publish_confirmed(n3, "transient", [b"x"]) == [b"x"]
    c2 = connect(n2)
    ch = c2.channel()
    got = []
    tag = ch.basic_consume("transient", lambda ch_, m, p, b: (got.append(b), ch_.basic_ack(m.delivery_tag)))
    wait_for(lambda: (c2.process_data_events(0.05), got == [b"x"])[1], what="the message through n2")
    wait_for(lambda: count_on(n1, "transient")[1] == 1, what="the consumer seen on the home")
    ch.basic_cancel(tag)
    c2.close()
    for n in (n1, n2, n3):
        wait_for(lambda: missing_on(n, "transient"), what=f"the auto-delete queue gone through {n.port}")


def test_an_expiring_queue_goes_from_every_node_and_an_exclusive_consumer_elsewhere_is_refused(shared):
    n1, n2, n3 = shared.nodes
    c = connect(n1)
    ch = c.channel()
    ch.queue_declare("expiring", arguments={"x-expires": 500})
    ch.queue_declare("guarded")
    ch.basic_consume("guarded", lambda *a: None, exclusive=True)
    # Unused for its x-expires on its home: gone there, and its faces with it.
    for n in (n1, n2, n3):
        wait_for(lambda: missing_on(n, "expiring"), what=f"the expired queue gone through {n.port}")
    # The home refuses a second consumer of a queue in exclusive use: through another node
    # too, the channel is closed with RabbitMQ's 403, and the connection goes on.
    c3 = connect(n3)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c3.channel().basic_consume("guarded", lambda *a: None)
    assert e.value.reply_code == 403
    assert e.value.reply_text == "ACCESS_REFUSED - queue 'guarded' in vhost '/' in exclusive use"
    # An exclusive consumer through another node, once the first is gone, is the only one.
    c.close()
    wait_for(lambda: missing_on(n3, "guarded") or count_on(n3, "guarded")[1] == 0, what="the first consumer gone")
    ch3 = c3.channel()
    ch3.basic_consume("guarded", lambda *a: None, exclusive=True)
    c1 = connect(n1)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c1.channel().basic_consume("guarded", lambda *a: None)
    assert e.value.reply_code == 403
    c1.close()
    c3.close()


def test_a_dead_home_cancels_its_queue_s_consumers_elsewhere_and_nacks_publishes():
    for cluster in bounded_cluster():
        n1, n2, n3 = cluster.nodes
        c = connect(n3)
        c.channel().queue_declare("homed", durable=True)
        c.close()
        assert publish_confirmed(n1, "homed", [b"before"]) == [b"before"]
        c1 = connect(n1)
        ch = c1.channel()
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
        got = []
        ch.basic_consume("homed", lambda ch_, m, p, b: (got.append(b), ch_.basic_ack(m.delivery_tag)))
        wait_for(lambda: (c1.process_data_events(0.05), got == [b"before"])[1], what="the first message")
        n3.kill()
        wait_for(lambda: (c1.process_data_events(0.05), len(cancelled) == 1)[1], timeout=30,
                 what="basic.cancel once the home is gone")
        # A consume through another node gets RabbitMQ's answer for a queue whose node is down.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c1.channel().basic_consume("homed", lambda *a: None)
        assert e.value.reply_code == 404
        assert "home node 'n3' of durable queue 'homed' in vhost '/' is down or inaccessible" in e.value.reply_text
        c1.close()
        # A declare through another node gets RabbitMQ's answer for a queue whose node is down.
        c2 = connect(n2)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c2.channel().queue_declare("homed", durable=True)
        assert e.value.reply_code == 404
        assert e.value.reply_text == ("NOT_FOUND - home node 'n3' of durable queue 'homed' in vhost '/' "
                                      "is down or inaccessible")
        ch2 = c2.channel()
        ch2.confirm_delivery()
        with pytest.raises(pika.exceptions.NackError):
            ch2.basic_publish("", "homed", b"lost?", pika.BasicProperties(delivery_mode=2))
        c2.close()
        # Back: the queue kept what it had confirmed, and is reachable again (a publish may
        # be nacked until the node has its placements again: nacked ones are not enqueued).
        n3.restart()
        wait_for(lambda: publish_confirmed(n1, "homed", [b"after"]) == [b"after"], timeout=30,
                 what="a publish confirmed by the restarted home")
        # "before" may come again: its ack may not have reached the home's disk before the
        # kill (at least once); the nacked publish never arrives.
        got = consume(n2, "homed", 1, until=b"after")
        assert got[-1] == b"after" and set(got) <= {b"before", b"after"}
        # A node applies its log again as it restarts: it has its faces again, under the
        # placements the others have, so a delete through another node leaves none anywhere.
        n1.restart()
        assert count_on(n1, "homed") == (0, 0)
        c2 = connect(n2)
        c2.channel().queue_delete("homed")
        c2.close()
        for n in (n1, n2, n3):
            wait_for(lambda: missing_on(n, "homed"), what=f"the queue gone through {n.port}")


def test_a_stopped_home_holds_back_only_the_confirms_of_its_own_queues(shared):
    """A publish to a classic queue whose home stopped answering (SIGSTOP: its connections
    hang) waits for that home; confirms of the same node's other publishes (to a quorum queue
    here) do not wait behind it."""
    leader = wait_for(lambda: leader_of(shared), what="a leader")
    home, via = [n for n in shared.nodes if n is not leader]
    c = connect(via)
    c.channel().queue_declare("stalled-home-qq", durable=True, arguments=QUORUM)
    c.close()
    c = connect(home)
    c.channel().queue_declare("on-stalled-home", durable=True)
    c.close()
    home.proc.send_signal(signal.SIGSTOP)
    try:
        outcome = []

        def to_stopped_home():
            outcome.append(publish_confirmed(via, "on-stalled-home", [b"waits"]))

        t = threading.Thread(target=to_stopped_home)
        t.start()
        # Once that publish is out (its channel waits for the home), the quorum queue's confirms
        # come while it still waits.
        wait_for(lambda: json_get(via, "/api/overview")["message_stats"].get("publish", 0) >= 1,
                 what="the publish to the stopped home sent")
        assert publish_confirmed(via, "stalled-home-qq", [b"a", b"b"]) == [b"a", b"b"]
        assert outcome == [], "the publish to the stopped home was answered first"
        t.join(timeout=60)
        assert outcome == [[]]  # nacked once the home did not answer in time
    finally:
        home.proc.send_signal(signal.SIGCONT)
