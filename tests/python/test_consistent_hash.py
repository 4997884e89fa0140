"""The consistent-hash exchange (`x-consistent-hash`) through pika, as RabbitMQ's plugin of that
name behaves: binding keys are weights, one queue per message, the same key to the same queue,
hashing a header or a property instead of the routing key, restarts keep it, and its checks
give RabbitMQ's texts."""
import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from conftest import Hare


def counts(ch, queues):
    return {q: ch.queue_declare(q, passive=True).method.message_count for q in queues}


def test_weights_share_the_messages_and_a_key_keeps_its_queue(ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    for q, weight in (("chx-a", "1"), ("chx-b", "3")):
        ch.queue_declare(q)
        ch.queue_bind(q, "chx", weight)
    for i in range(4000):
        ch.basic_publish("chx", f"order-{i}", b"x")
    got = counts(ch, ["chx-a", "chx-b"])
    assert sum(got.values()) == 4000, got
    assert 2700 < got["chx-b"] < 3300, got
    # The same key goes to the same queue every time.
    ch.queue_purge("chx-a")
    ch.queue_purge("chx-b")
    for _ in range(50):
        ch.basic_publish("chx", "the-same-key", b"x")
    got = counts(ch, ["chx-a", "chx-b"])
    assert sorted(got.values()) == [0, 50], got


@pytest.mark.parametrize("args, props", [
    ({"hash-header": "tenant"}, lambda v: pika.BasicProperties(headers={"tenant": v})),
    ({"hash-property": "message_id"}, lambda v: pika.BasicProperties(message_id=v)),
    ({"hash-property": "correlation_id"}, lambda v: pika.BasicProperties(correlation_id=v)),
], ids=["header", "message_id", "correlation_id"])
def test_a_header_or_property_is_hashed_instead_of_the_key(ch, args, props):
    name = "chx-" + next(iter(args.values()))
    ch.exchange_declare(name, "x-consistent-hash", arguments=args)
    queues = [f"{name}-{i}" for i in range(4)]
    for q in queues:
        ch.queue_declare(q)
        ch.queue_bind(q, name, "1")
    # Different routing keys, one value: one queue gets them all.
    for i in range(40):
        ch.basic_publish(name, f"key-{i}", b"x", properties=props("tenant-7"))
    assert sorted(counts(ch, queues).values()) == [0, 0, 0, 40]
    # Many values spread over the queues.
    for i in range(400):
        ch.basic_publish(name, "one-key", b"x", properties=props(f"tenant-{i}"))
    assert min(counts(ch, queues).values()) > 40


def test_checks_give_rabbitmqs_errors(hare):
    c = hare.connect()
    for args, text in [
        ({"hash-property": "priority"}, "PRECONDITION_FAILED - Unsupported property: priority"),
        ({"hash-header": "h", "hash-property": "message_id"},
         "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive"),
    ]:
        ch = c.channel()
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.exchange_declare("chx-bad", "x-consistent-hash", arguments=args)
        assert (e.value.reply_code, e.value.reply_text) == (406, text)
    ch = c.channel()
    ch.exchange_declare("chx-keys", "x-consistent-hash")
    ch.queue_declare("chx-keys-q")
    for key, text in [("abc", 'PRECONDITION_FAILED - The binding key must be an integer: <<"abc">>'),
                      ("0", "PRECONDITION_FAILED - The binding key must be greater than 0")]:
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.queue_bind("chx-keys-q", "chx-keys", key)
        assert (e.value.reply_code, e.value.reply_text) == (406, text)
        ch = c.channel()
    c.close()


def test_a_durable_one_routes_the_same_after_a_restart():
    h = Hare()
    try:
        c = h.connect()
        ch = c.channel()
        ch.exchange_declare("chx-durable", "x-consistent-hash", durable=True, arguments={"hash-header": "k"})
        for q, w in (("chx-d1", "2"), ("chx-d2", "5")):
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, "chx-durable", w)
        keys = [f"k{i}" for i in range(30)]

        def placement(ch):
            where = {}
            for k in keys:
                ch.basic_publish("chx-durable", "", b"x", properties=pika.BasicProperties(headers={"k": k}))
                got = counts(ch, ["chx-d1", "chx-d2"])
                where[k] = max(got, key=got.get)
                ch.queue_purge("chx-d1")
                ch.queue_purge("chx-d2")
            return where

        before = placement(ch)
        assert set(before.values()) == {"chx-d1", "chx-d2"}
        c.close()
        h.restart()
        c = h.connect()
        assert placement(c.channel()) == before
        c.close()
    finally:
        h.stop()
