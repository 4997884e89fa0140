"""Dynamic shovels as an operator sets them through RabbitMQ's API (`/api/parameters/shovel`)
and as clients see their effect (pika): within one broker and between two, messages moved in
order with their properties, `src-delete-after`, exchange sources and forwarding headers,
the state in `/api/shovels`, shovels kept across a restart, and nothing lost when the source
broker is killed with SIGKILL in the middle (on-confirm: at least once)."""
import json
import re
import urllib.request

import pika
import pytest

import helpers
from conftest import Hare, wait_for
from helpers import free_ports, get_all


def api(hare, method, path, body=None):
    return helpers.api(hare.http_port, method, path, body)


def set_shovel(hare, name, value, vhost="%2F"):
    status, body = api(hare, "PUT", f"/api/parameters/shovel/{vhost}/{name}", {"value": value})
    assert status in (201, 204), body


def count(hare, queue):
    c = hare.connect()
    try:
        return c.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if c.is_open:
            c.close()


def publish(hare, queue, n, start=0):
    c = hare.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    for i in range(start, start + n):
        ch.basic_publish("", queue, b"m%06d" % i,
                         pika.BasicProperties(delivery_mode=2, priority=i % 10, headers={"i": i}, message_id=str(i),
                                              content_type="text/plain", expiration="600000"))
    c.close()


def drain(hare, queue):
    c = hare.connect()
    try:
        return [(body, props) for props, body in get_all(c, queue)]
    finally:
        c.close()


def state(hare, name):
    status, shovels = api(hare, "GET", "/api/shovels")
    return next((s for s in shovels if s["name"] == name), None)


@pytest.fixture
def broker():
    h = Hare()
    yield h
    h.stop()


def test_a_shovel_moves_a_queue_in_order_with_its_properties(broker):
    publish(broker, "from", 2000)
    set_shovel(broker, "move", {"src-uri": "amqp://", "src-queue": "from", "dest-uri": "amqp://", "dest-queue": "to"})
    wait_for(lambda: count(broker, "to") == 2000, timeout=30, what="every message moved")
    assert count(broker, "from") == 0
    s = wait_for(lambda: (state(broker, "move") or {}).get("messages_shovelled") == 2000 and state(broker, "move"),
                 timeout=10, what="the shovel's counts")
    assert (s["state"], s["type"], s["vhost"], s["src_queue"], s["dest_queue"]) == ("running", "dynamic", "/", "from", "to")
    got = drain(broker, "to")
    assert [b for b, _ in got] == [b"m%06d" % i for i in range(2000)]
    _, p = got[7]
    assert (p.priority, p.headers, p.message_id, p.content_type, p.delivery_mode, p.expiration) == (
        7, {"i": 7}, "7", "text/plain", 2, "600000")
    # The metrics count it.
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert re.search(r'hare_shovels\{state="running"\} 1(\.0)?\n', metrics)
    assert re.search(r'hare_shovel_messages\{vhost="/",shovel="move"\} 2000(\.0)?\n', metrics)
    # It keeps moving what arrives later, until it is deleted.
    publish(broker, "from", 10, start=2000)
    wait_for(lambda: count(broker, "to") == 10, timeout=30, what="later messages moved")
    assert api(broker, "GET", "/api/parameters/shovel/%2F/move")[1]["value"]["src-queue"] == "from"
    assert api(broker, "DELETE", "/api/parameters/shovel/%2F/move")[0] == 204
    wait_for(lambda: state(broker, "move") is None, timeout=10, what="the shovel stopped")
    publish(broker, "from", 5, start=3000)
    assert count(broker, "from") == 5


def test_delete_after_queue_length_moves_what_was_there_and_deletes_itself(broker):
    publish(broker, "batch", 300)
    set_shovel(broker, "once", {"src-uri": "amqp://", "src-queue": "batch", "dest-uri": "amqp://",
                                "dest-queue": "batch-done", "src-delete-after": "queue-length"})
    wait_for(lambda: api(broker, "GET", "/api/parameters/shovel/%2F/once")[0] == 404, timeout=30,
             what="the shovel to delete itself")
    assert count(broker, "batch-done") == 300
    publish(broker, "batch", 3, start=300)
    assert count(broker, "batch") == 3


def test_an_exchange_source_and_forwarding_headers(broker):
    c = broker.connect()
    ch = c.channel()
    ch.exchange_declare("events", "topic")
    ch.exchange_declare("archive", "fanout")
    ch.queue_declare("archived")
    ch.queue_bind("archived", "archive")
    set_shovel(broker, "tap", {"src-uri": "amqp://", "src-exchange": "events", "src-exchange-key": "order.#",
                               "dest-uri": "amqp://", "dest-exchange": "archive", "dest-add-forward-headers": True,
                               "ack-mode": "on-publish"})
    wait_for(lambda: (state(broker, "tap") or {}).get("state") == "running", timeout=10, what="the shovel running")
    ch.basic_publish("events", "order.new", b"o1")
    ch.basic_publish("events", "user.new", b"u1")
    wait_for(lambda: count(broker, "archived") == 1, timeout=10, what="the order archived")
    _, p, body = ch.basic_get("archived", auto_ack=True)
    assert body == b"o1"
    fwd = p.headers["x-shovelled"][0]
    assert (fwd["shovel-name"], fwd["shovel-type"], fwd["shovel-vhost"]) == (b"tap", b"dynamic", b"/") or (
        fwd["shovel-name"], fwd["shovel-type"], fwd["shovel-vhost"]) == ("tap", "dynamic", "/")
    c.close()


def test_refusals_and_a_shovel_kept_across_a_restart(broker):
    status, body = api(broker, "PUT", "/api/parameters/shovel/%2F/bad", {"value": {"src-uri": "amqp://", "dest-uri": 5}})
    assert status == 400 and "Must specify 'src-exchange' or 'src-queue'" in body["reason"]
    status, body = api(broker, "PUT", "/api/parameters/shovel/nowhere/s", {"value": {}})
    assert status == 404
    publish(broker, "kept-src", 10)
    set_shovel(broker, "kept", {"src-uri": "amqp://", "src-queue": "kept-src", "dest-uri": "amqp://", "dest-queue": "kept-dst"})
    wait_for(lambda: count(broker, "kept-dst") == 10, timeout=30, what="the first ten")
    broker.restart(graceful=False)
    publish(broker, "kept-src", 10, start=10)
    wait_for(lambda: count(broker, "kept-dst") == 20, timeout=30, what="the shovel running again after kill -9")
    defs = api(broker, "GET", "/api/definitions")[1]
    assert [p["name"] for p in defs["parameters"] if p["component"] == "shovel"] == ["kept"]


def test_a_shovel_between_brokers_loses_nothing_when_the_source_is_killed(tmp_path):
    (port,) = free_ports(1)
    source = Hare(extra_args=["--port", str(port)])
    dest = Hare()
    try:
        total = 20000
        publish(source, "jobs", total)
        set_shovel(dest, "pull", {"src-uri": f"amqp://guest:guest@127.0.0.1:{port}", "src-queue": "jobs",
                                  "dest-uri": "amqp://", "dest-queue": "jobs", "reconnect-delay": 0.5,
                                  "src-prefetch-count": 200})
        wait_for(lambda: (count(dest, "jobs") or 0) > 2000, timeout=30, what="the shovel under way")
        source.kill()
        s = wait_for(lambda: (state(dest, "pull") or {}).get("state") in ("terminated", "starting") and state(dest, "pull"),
                     timeout=30, what="the shovel to notice")
        source.restart(graceful=False)
        wait_for(lambda: count(source, "jobs") == 0, timeout=60, what="the source drained after the restart")
        got = [b for b, _ in drain(dest, "jobs")]
        # At least once: every message arrived, in order apart from redeliveries.
        assert set(got) == {b"m%06d" % i for i in range(total)}, f"missing {total - len(set(got))}"
        # What was confirmed at the destination but whose ack the source lost with its crash
        # comes again: duplicates, at most what was in flight (the prefetch) per failure.
        duplicates = len(got) - len(set(got))
        assert duplicates <= 2 * 200
        print(f"moved {total} messages across a kill -9 of the source: {duplicates} duplicates, "
              f"state before the restart: {s['state']} ({s.get('reason')})")
    finally:
        source.stop()
        dest.stop()
