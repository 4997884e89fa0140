"""The delayed-message exchange (`x-delayed-message`) through pika, as RabbitMQ's
rabbitmq_delayed_message_exchange plugin behaves: `x-delay` holds a message for that many
milliseconds, then the exchange routes it as its `x-delayed-type` with the bindings of that
moment and the header turned negative; no delay (or one out of range) routes at once; a
mandatory publish that is held comes back at once; the declare checks give the plugin's texts;
a durable exchange keeps what it holds across a restart and a kill -9."""
import decimal
import time

import pika
import pytest
import requests
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, UnroutableError

from conftest import Hare, wait_for


def delayed(ch, name, kind="direct", durable=False, **extra):
    ch.exchange_declare(name, "x-delayed-message", durable=durable,
                        arguments={"x-delayed-type": kind, **extra})


def publish(ch, exchange, key, body, delay=None, mandatory=False, persistent=False, **headers):
    if delay is not None:
        headers["x-delay"] = delay
    props = pika.BasicProperties(headers=headers or None, delivery_mode=2 if persistent else None)
    ch.basic_publish(exchange, key, body, properties=props, mandatory=mandatory)


def take(ch, queue, timeout=10.0):
    """The next message of `queue` as (body, headers, seconds waited), within `timeout`."""
    start = time.monotonic()
    got = wait_for(lambda: _get(ch, queue), timeout=timeout, what=f"a message in {queue}")
    return got[0], got[1], time.monotonic() - start


def _get(ch, queue):
    method, props, body = ch.basic_get(queue, auto_ack=True)
    return (body, props.headers) if method else None


def count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def test_messages_wait_their_delay_and_leave_in_due_order(ch):
    delayed(ch, "dx")
    ch.queue_declare("dx-q")
    ch.queue_bind("dx-q", "dx", "k")
    start = time.monotonic()
    publish(ch, "dx", "k", b"late", delay=900)
    publish(ch, "dx", "k", b"early", delay=300)
    publish(ch, "dx", "k", b"now")
    # Without a delay it routes at once, as the type the exchange names.
    assert _get(ch, "dx-q") == (b"now", None)
    assert count(ch, "dx-q") == 0
    body, headers, _ = take(ch, "dx-q")
    assert (body, headers["x-delay"]) == (b"early", -300)
    assert time.monotonic() - start >= 0.3
    body, headers, _ = take(ch, "dx-q")
    assert (body, headers["x-delay"]) == (b"late", -900)
    assert time.monotonic() - start >= 0.9


@pytest.mark.parametrize("delay, held", [
    ("250", True), (decimal.Decimal("250.9"), True), (0, False), (-100, False), ("soon", False), (2**32, False), (2**32 - 1, True),
], ids=["string", "decimal", "zero", "negative", "not-a-number", "too-long", "longest"])
def test_delay_values_as_the_plugin_reads_them(ch, delay, held):
    name = f"dx-values-{abs(hash(str(delay))) % 10**6}"
    delayed(ch, name)
    ch.queue_declare(name)
    ch.queue_bind(name, name, "")
    publish(ch, name, "", b"m", delay=delay)
    if held:
        assert count(ch, name) == 0
        if delay != 2**32 - 1:
            body, headers, _ = take(ch, name)
            assert headers["x-delay"] == -250
    else:
        assert count(ch, name) == 1
    ch.exchange_delete(name)


def test_routes_as_the_type_it_names_with_the_bindings_of_when_it_is_due(ch):
    delayed(ch, "dx-topic", "topic")
    ch.queue_declare("dx-topic-a")
    ch.queue_declare("dx-topic-b")
    ch.queue_bind("dx-topic-a", "dx-topic", "orders.*")
    publish(ch, "dx-topic", "orders.eu", b"m", delay=400)
    # Bound after the publish, before it is due: the binding counts.
    ch.queue_bind("dx-topic-b", "dx-topic", "#")
    assert take(ch, "dx-topic-a")[0] == b"m"
    assert take(ch, "dx-topic-b")[0] == b"m"
    delayed(ch, "dx-headers", "headers")
    ch.queue_declare("dx-headers-q")
    ch.queue_bind("dx-headers-q", "dx-headers", "", arguments={"x-match": "all", "region": "eu"})
    publish(ch, "dx-headers", "", b"eu", delay=200, region="eu")
    publish(ch, "dx-headers", "", b"us", delay=200, region="us")
    body, headers, _ = take(ch, "dx-headers-q")
    assert (body, headers["region"]) == (b"eu", "eu")
    assert wait_for(lambda: count(ch, "dx-headers-q") == 0, timeout=2)


def test_a_held_mandatory_message_comes_back_at_once_and_still_goes_out(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    delayed(ch, "dx-mandatory")
    ch.queue_declare("dx-mandatory-q")
    ch.queue_bind("dx-mandatory-q", "dx-mandatory", "k")
    # As the plugin: a held message has no route yet, so it comes back (pika raises on the
    # return of a confirmed publish).
    with pytest.raises(UnroutableError) as e:
        publish(ch, "dx-mandatory", "k", b"m", delay=300, mandatory=True)
    [returned] = e.value.messages
    assert (returned.method.reply_text, returned.body) == ("NO_ROUTE", b"m")
    assert take(ch, "dx-mandatory-q")[0] == b"m"


def test_a_held_message_skips_the_alternate_exchange_until_it_is_due(ch):
    ch.exchange_declare("dx-ae", "fanout")
    ch.queue_declare("dx-ae-q")
    ch.queue_bind("dx-ae-q", "dx-ae", "")
    delayed(ch, "dx-with-ae", **{"alternate-exchange": "dx-ae"})
    publish(ch, "dx-with-ae", "nowhere", b"m", delay=300)
    assert count(ch, "dx-ae-q") == 0
    # Due, it matches no binding: the alternate exchange takes it then.
    assert take(ch, "dx-ae-q")[0] == b"m"


def test_through_an_exchange_binding(ch):
    delayed(ch, "dx-e2e")
    ch.exchange_declare("dx-front", "direct")
    ch.exchange_bind("dx-e2e", "dx-front", "k")
    ch.queue_declare("dx-e2e-q")
    ch.queue_bind("dx-e2e-q", "dx-e2e", "k")
    publish(ch, "dx-front", "k", b"m", delay=300)
    assert count(ch, "dx-e2e-q") == 0
    body, headers, _ = take(ch, "dx-e2e-q")
    assert (body, headers["x-delay"]) == (b"m", -300)


def test_declare_checks_give_the_plugins_errors(hare):
    c = hare.connect()
    for args, text in [
        ({}, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": 5}, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": "x-delayed-message"},
         "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"),
        ({"x-delayed-type": "x-consistent-hash", "hash-property": "priority"},
         "PRECONDITION_FAILED - Unsupported property: priority"),
    ]:
        ch = c.channel()
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.exchange_declare("dx-bad", "x-delayed-message", arguments=args)
        assert (e.value.reply_code, e.value.reply_text) == (406, text)
    with pytest.raises(ConnectionClosedByBroker) as e:
        c.channel().exchange_declare("dx-bad", "x-delayed-message", arguments={"x-delayed-type": "nonesuch"})
    assert (e.value.reply_code, e.value.reply_text) == (503, "COMMAND_INVALID - unknown exchange type 'nonesuch'")


def test_the_api_counts_held_messages_and_a_delete_drops_them(hare, ch):
    delayed(ch, "dx-api")
    ch.queue_declare("dx-api-q")
    ch.queue_bind("dx-api-q", "dx-api", "")
    for _ in range(3):
        publish(ch, "dx-api", "", b"m", delay=60_000)
    url = f"http://127.0.0.1:{hare.http_port}/api/exchanges/%2F/dx-api"

    def seen():
        got = requests.get(url, auth=("guest", "guest")).json()
        return (got["type"], got["messages_delayed"], got.get("message_stats", {}).get("publish_in"))

    wait_for(lambda: seen() == ("x-delayed-message", 3, 3), what=f"3 held messages, not {seen()}")
    ch.exchange_delete("dx-api")
    delayed(ch, "dx-api")
    assert requests.get(url, auth=("guest", "guest")).json()["messages_delayed"] == 0


@pytest.mark.parametrize("graceful", [True, False], ids=["restart", "kill-9"])
def test_a_durable_one_keeps_what_it_holds_across_a_restart(graceful):
    h = Hare()
    try:
        c = h.connect()
        ch = c.channel()
        ch.confirm_delivery()
        delayed(ch, "dx-durable", durable=True)
        ch.queue_declare("dx-durable-q", durable=True)
        ch.queue_bind("dx-durable-q", "dx-durable", "")
        # One falls due while the broker is down, one after it is back.
        publish(ch, "dx-durable", "", b"soon", delay=200, persistent=True)
        publish(ch, "dx-durable", "", b"later", delay=2500, persistent=True)
        c.close()
        h.restart(graceful=graceful)
        c = h.connect()
        ch = c.channel()
        assert take(ch, "dx-durable-q")[0] == b"soon"
        body, headers, _ = take(ch, "dx-durable-q")
        assert (body, headers["x-delay"]) == (b"later", -2500)
        c.close()
        # Released and on disk in the queue: not held again after a graceful restart (after a
        # crash, one released just before it may go out again: at least once, never lost).
        h.restart()
        assert "messages held" not in h.read_log()
        c = h.connect()
        ch = c.channel()
        assert count(ch, "dx-durable-q") == 0
        url = f"http://127.0.0.1:{h.http_port}/api/exchanges/%2F/dx-durable"
        assert requests.get(url, auth=("guest", "guest")).json()["messages_delayed"] == 0
        c.close()
    finally:
        h.stop()
