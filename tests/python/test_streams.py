"""Stream queues over AMQP 0-9-1 (`x-queue-type: stream`) through pika, as RabbitMQ 3.10's
streams behave: messages stay after they are consumed, each consumer starts where its
`x-stream-offset` says and every delivery carries its offset, acks only return credit,
retention removes whole segments, a restart keeps the log, and wrong use gets RabbitMQ's
codes and texts."""
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from conftest import Hare, wait_for

STREAM = {"x-queue-type": "stream"}


def declare(ch, name, **extra):
    return ch.queue_declare(name, durable=True, arguments={**STREAM, **extra})


def publish_confirmed(ch, queue, bodies):
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", queue, b, properties=pika.BasicProperties(delivery_mode=2))


def consume(conn, queue, count, offset=None, prefetch=50, timeout=10, args=None):
    """Takes `count` deliveries from `queue` starting at `offset`; returns (offset, body) pairs."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []
    args = {**(args or {}), **({} if offset is None else {"x-stream-offset": offset})}

    def on_message(c, method, props, body):
        got.append((props.headers["x-stream-offset"], body))
        c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message, arguments=args)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    ch.close()
    return got


def test_consumers_read_from_their_own_offsets_and_messages_stay(hare):
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-offsets")
    publish_confirmed(ch, "s-offsets", [f"m{i}".encode() for i in range(100)])
    wait_for(lambda: ch.queue_declare("s-offsets", passive=True).method.message_count == 100, what="100 stored")

    got = consume(conn, "s-offsets", 100, "first", prefetch=7)
    assert got == [(i, f"m{i}".encode()) for i in range(100)]
    # Consuming removed nothing: another consumer reads them all again, from any offset.
    assert ch.queue_declare("s-offsets", passive=True).method.message_count == 100
    assert consume(conn, "s-offsets", 50, 50) == [(i, f"m{i}".encode()) for i in range(50, 100)]
    # An interval counts back from now: an hour ago is before the first message.
    assert len(consume(conn, "s-offsets", 100, "1h")) == 100
    # A timestamp in the future, and `next`, start after the end: only what comes later.
    later = conn.channel()
    later.basic_qos(prefetch_count=10)
    seen = []
    later.basic_consume("s-offsets", lambda c, m, p, b: (seen.append(p.headers["x-stream-offset"]),
                                                          c.basic_ack(m.delivery_tag)),
                        arguments={"x-stream-offset": "next"})
    conn.process_data_events(time_limit=0.2)
    assert seen == []
    ch.basic_publish("", "s-offsets", b"late")
    wait_for(lambda: conn.process_data_events(time_limit=0.05) or seen == [100], what="the new message")
    conn.close()


def test_last_starts_at_the_newest_chunk(hare):
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-last")
    # Confirmed one at a time: each publish is its own chunk.
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "s-last", f"m{i}".encode())
    got = consume(conn, "s-last", 1, "last")
    assert got == [(4, b"m4")]
    conn.close()


def test_a_consumers_filter_passes_over_chunks_without_its_values(hare):
    """As RabbitMQ 3.13: `x-stream-filter` (a string, or an array of them) and
    `x-stream-match-unfiltered` make the broker pass over whole chunks none of whose messages
    has a wanted value (publishers set theirs in `x-stream-filter-value`)."""
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-filter")
    ch.confirm_delivery()
    # Confirmed one at a time: each publish is a chunk of its own.
    for i, value in enumerate(["emea", "apac", None, "emea", "amer", None, "emea", "amer"]):
        headers = {"x-stream-filter-value": value} if value else {}
        ch.basic_publish("", "s-filter", f"m{i}".encode(), pika.BasicProperties(headers=headers))

    def offsets(count, args):
        return [o for o, _ in consume(conn, "s-filter", count, "first", args=args, timeout=5)]

    # The last chunk each consumer is due is published last: nothing else came before it.
    assert offsets(3, {"x-stream-filter": "emea"}) == [0, 3, 6]
    unfiltered = {"x-stream-filter": ["amer", 7], "x-stream-match-unfiltered": True}
    assert offsets(4, unfiltered) == [2, 4, 5, 7]
    assert offsets(3, {"x-stream-filter": ["apac", "amer"]}) == [1, 4, 7]
    assert offsets(8, {}) == list(range(8))
    conn.close()


def test_prefetch_bounds_what_is_unacknowledged(hare):
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-credit")
    publish_confirmed(ch, "s-credit", [b"x"] * 30)
    c = conn.channel()
    c.basic_qos(prefetch_count=5)
    held = []
    c.basic_consume("s-credit", lambda ch_, m, p, b: held.append(m.delivery_tag),
                    arguments={"x-stream-offset": "first"})
    wait_for(lambda: conn.process_data_events(time_limit=0.05) or len(held) == 5, what="five deliveries")
    conn.process_data_events(time_limit=0.3)
    assert len(held) == 5
    # Acks return credit, and the consumer reads on.
    c.basic_ack(held[-1], multiple=True)
    wait_for(lambda: conn.process_data_events(time_limit=0.05) or len(held) == 10, what="five more")
    conn.close()


def test_the_log_survives_a_restart(fresh_hare):
    h = fresh_hare
    conn = h.connect()
    ch = conn.channel()
    declare(ch, "s-restart")
    publish_confirmed(ch, "s-restart", [f"before-{i}".encode() for i in range(20)])
    conn.close()
    h.restart()
    conn = h.connect()
    ch = conn.channel()
    assert ch.queue_declare("s-restart", passive=True).method.message_count == 20
    # A consumer waiting at the end gets what is published after the restart.
    c = conn.channel()
    c.basic_qos(prefetch_count=50)
    got = []
    c.basic_consume("s-restart", lambda ch_, m, p, b: (got.append((p.headers["x-stream-offset"], b)),
                                                       ch_.basic_ack(m.delivery_tag)),
                    arguments={"x-stream-offset": "first"})
    wait_for(lambda: conn.process_data_events(time_limit=0.05) or len(got) == 20, what="the 20 kept")
    publish_confirmed(ch, "s-restart", [b"after"])
    wait_for(lambda: conn.process_data_events(time_limit=0.05) or len(got) == 21, what="the new one")
    assert [o for o, _ in got] == list(range(21))
    assert got[0][1] == b"before-0" and got[20][1] == b"after"
    conn.close()


def test_retention_removes_whole_old_segments(hare):
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-retention", **{"x-max-length-bytes": 20000, "x-stream-max-segment-size-bytes": 5000})
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", "s-retention", b"%04d" % i + b"." * 500)
    count = ch.queue_declare("s-retention", passive=True).method.message_count
    assert 0 < count < 200
    got = consume(conn, "s-retention", count, "first")
    first = got[0][0]
    assert first > 0 and [o for o, _ in got] == list(range(first, 200))
    assert got[-1][1].startswith(b"0199")
    conn.close()


def closes_channel(hare, action, code, text):
    conn = hare.connect()
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        action(ch)
    assert (e.value.reply_code, e.value.reply_text) == (code, text)
    conn.close()


def closes_connection(hare, action, code, text):
    conn = hare.connect()
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as e:
        action(ch)
        conn.process_data_events(time_limit=1)
    assert (e.value.reply_code, e.value.reply_text) == (code, text)


def test_declare_checks_give_rabbitmqs_texts(hare):
    conn = hare.connect()
    declare(conn.channel(), "s-checks")
    conn.close()
    where = "for queue 's-x' in vhost '/'"
    for kwargs, text in [
        ({"durable": False}, f"invalid property 'non-durable' {where}"),
        ({"durable": True, "exclusive": True}, f"invalid property 'exclusive-owner' {where}"),
        ({"durable": True, "auto_delete": True}, f"invalid property 'auto-delete' {where}"),
        ({"durable": True, "arguments": {**STREAM, "x-max-length": 10}},
         f"invalid arg 'x-max-length' {where} of queue type rabbit_stream_queue"),
        ({"durable": True, "arguments": {**STREAM, "x-max-age": "10x"}},
         f"invalid arg 'x-max-age' {where}: invalid_max_age"),
        ({"durable": True, "arguments": {**STREAM, "x-stream-max-segment-size-bytes": 4_000_000_000}},
         "Exceeded max value for x-stream-max-segment-size-bytes"),
    ]:
        kwargs.setdefault("arguments", STREAM)
        closes_channel(hare, lambda ch: ch.queue_declare("s-x", **kwargs), 406, "PRECONDITION_FAILED - " + text)
    closes_channel(hare, lambda ch: ch.queue_declare("", durable=True, arguments=STREAM), 406,
                   "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue")


def test_consume_and_method_checks_give_rabbitmqs_texts(hare):
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-use")
    ch.queue_declare("s-classic")
    ch.basic_publish("", "s-use", b"x")
    conn.close()
    q = "queue 's-use' in vhost '/'"

    def consume_with(no_ack=False, prefetch=10, args=None, global_qos=False):
        def action(ch):
            if prefetch:
                ch.basic_qos(prefetch_count=prefetch)
            if global_qos:
                ch.basic_qos(prefetch_count=prefetch, global_qos=True)
            ch.basic_consume("s-use", lambda *a: None, auto_ack=no_ack, arguments=args or {})
        return action

    closes_channel(hare, consume_with(prefetch=0), 406,
                   f"PRECONDITION_FAILED - consumer prefetch count is not set for '{q}'")
    closes_channel(hare, consume_with(args={"x-stream-offset": "soon"}), 406,
                   f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for {q}: "
                   "{invalid_stream_offset_arg,{longstr,<<\"soon\">>}}")
    closes_channel(hare, consume_with(args={"x-priority": 3}), 406,
                   f"PRECONDITION_FAILED - invalid arg 'x-priority' for {q} of queue type rabbit_stream_queue")
    closes_channel(hare, lambda ch: ch.basic_consume("s-classic", lambda *a: None,
                                                     arguments={"x-stream-offset": "first"}), 406,
                   "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's-classic' in vhost '/' "
                   "of queue type rabbit_classic_queue")
    closes_connection(hare, consume_with(no_ack=True), 540,
                      f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues {q}")
    closes_connection(hare, consume_with(global_qos=True), 540,
                      f"NOT_IMPLEMENTED - {q} does not support global qos")
    closes_connection(hare, lambda ch: ch.basic_get("s-use"), 540,
                      f"NOT_IMPLEMENTED - basic.get not supported by stream queues {q}")
    closes_connection(hare, lambda ch: ch.queue_purge("s-use"), 540,
                      f"NOT_IMPLEMENTED - queue.purge not supported by stream queues {q}")

    def nack(ch):
        ch.basic_qos(prefetch_count=10)
        tags = []
        ch.basic_consume("s-use", lambda c, m, p, b: tags.append(m.delivery_tag),
                         arguments={"x-stream-offset": "first"})
        wait_for(lambda: ch.connection.process_data_events(time_limit=0.05) or tags, what="a delivery")
        ch.basic_nack(tags[0], requeue=True)

    closes_connection(hare, nack, 540,
                      f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues {q}")


def test_the_management_api_lists_a_stream(hare):
    from helpers import api
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-api")
    publish_confirmed(ch, "s-api", [b"abc"] * 3)
    conn.close()
    q = wait_for(lambda: (lambda q: q if q.get("messages") == 3 else None)(
        api(hare.http_port, "GET", "/api/queues/%2F/s-api")[1]), what="the stream's listing")
    assert q["type"] == "stream" and q["durable"] is True


def test_a_policy_sets_retention_and_wins_over_the_argument(hare):
    from helpers import api
    status, _ = api(hare.http_port, "PUT", "/api/policies/%2F/stream-retention", {
        "pattern": "^s-policy", "apply-to": "queues",
        "definition": {"max-length-bytes": 20000, "stream-max-segment-size-bytes": 5000}})
    assert status in (201, 204)
    # A policy with a key streams do not take does not apply to a stream (as in RabbitMQ).
    status, _ = api(hare.http_port, "PUT", "/api/policies/%2F/classic-only", {
        "pattern": "^s-policy", "apply-to": "queues", "priority": 5, "definition": {"max-length": 3}})
    assert status in (201, 204)
    conn = hare.connect()
    ch = conn.channel()
    declare(ch, "s-policy", **{"x-max-length-bytes": 10_000_000})
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", "s-policy", b"%04d" % i + b"." * 500)
    count = ch.queue_declare("s-policy", passive=True).method.message_count
    assert 0 < count < 200
    q = api(hare.http_port, "GET", "/api/queues/%2F/s-policy")[1]
    assert q["policy"] == "stream-retention"
    assert q["effective_policy_definition"]["max-length-bytes"] == 20000
    conn.close()
    api(hare.http_port, "DELETE", "/api/policies/%2F/stream-retention")
    api(hare.http_port, "DELETE", "/api/policies/%2F/classic-only")
