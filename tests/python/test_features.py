"""basic.get, nack/requeue, headers exchanges, mandatory returns, exclusive queues, properties,
large bodies, transactions, auto-delete, cancel notification, qos, exchange-to-exchange bindings."""
import datetime
import decimal
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from conftest import wait_for
from helpers import bodies, drain


def test_basic_get_and_get_empty(ch):
    ch.queue_declare("getq", auto_delete=False)
    ch.queue_purge("getq")
    assert ch.basic_get("getq") == (None, None, None)
    for i in range(3):
        ch.basic_publish("", "getq", f"m{i}".encode())
    method, props, body = ch.basic_get("getq", auto_ack=True)
    assert body == b"m0" and method.message_count == 2 and not method.redelivered
    method, _, body = ch.basic_get("getq")
    assert body == b"m1"
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get("getq")
    assert body == b"m1" and method.redelivered
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_delete("getq").method.message_count == 1


def test_nack_requeue_keeps_order_and_marks_redelivered(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    got = []
    for _ in range(3):
        method, _, body = ch.basic_get(q)
        got.append((method.delivery_tag, body))
    # Requeue 0..2 in one go (multiple): they go back to the head, in order.
    ch.basic_nack(got[-1][0], multiple=True, requeue=True)
    order = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            break
        order.append((body, method.redelivered))
    assert order == [(b"0", True), (b"1", True), (b"2", True), (b"3", False), (b"4", False)]


def test_reject_without_requeue_drops(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.basic_get(q) == (None, None, None)


def test_consumer_requeue_on_channel_close(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("redeliver_q")
    ch.queue_purge("redeliver_q")
    ch.basic_publish("", "redeliver_q", b"once")
    # Take it without acking, then close the channel: it must come back redelivered.
    method, _, body = ch.basic_get("redeliver_q")
    assert body == b"once"
    ch.close()
    ch2 = c.channel()
    method, _, body = ch2.basic_get("redeliver_q", auto_ack=True)
    assert body == b"once" and method.redelivered
    ch2.queue_delete("redeliver_q")
    c.close()


def test_headers_exchange_all_and_any(ch):
    ch.exchange_declare("hdrs", "headers")
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, "hdrs", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, "hdrs", arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.basic_publish("hdrs", "", b"both", pika.BasicProperties(headers={"format": "pdf", "type": "report"}))
    ch.basic_publish("hdrs", "", b"log", pika.BasicProperties(headers={"format": "zip", "type": "log"}))
    ch.basic_publish("hdrs", "", b"none", pika.BasicProperties(headers={"format": "zip"}))
    ch.basic_publish("hdrs", "", b"noheaders")
    assert bodies(drain(ch, q_all, 1)) == [b"both"]
    assert bodies(drain(ch, q_any, 2)) == [b"both", b"log"]
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_bind(q_all, "hdrs", arguments={"x-match": "some"})
    assert e.value.reply_code == 406


def test_mandatory_unroutable_is_returned(ch):
    returned = []
    ch.add_on_return_callback(lambda chan, method, props, body: returned.append((method.reply_code, method.reply_text, body)))
    ch.basic_publish("amq.direct", "nobody-home", b"lost?", mandatory=True)
    wait_for(lambda: ch.connection.process_data_events(time_limit=0.01) or returned, what="basic.return")
    assert returned == [(312, "NO_ROUTE", b"lost?")]
    ch.confirm_delivery()
    with pytest.raises(UnroutableError):
        ch.basic_publish("amq.direct", "nobody-home", b"lost again", mandatory=True)


def test_exclusive_queue_is_locked_to_its_connection(hare):
    owner = hare.connect()
    och = owner.channel()
    och.queue_declare("mine", exclusive=True)
    other = hare.connect()
    for action in (
        lambda c: c.queue_declare("mine"),
        lambda c: c.basic_consume("mine", lambda *a: None),
        lambda c: c.queue_delete("mine"),
        lambda c: c.basic_get("mine"),
    ):
        with pytest.raises(ChannelClosedByBroker) as e:
            action(other.channel())
        assert e.value.reply_code == 405
    owner.close()
    # The queue goes away with its connection.
    with pytest.raises(ChannelClosedByBroker) as e:
        other.channel().queue_declare("mine", passive=True)
    assert e.value.reply_code == 404
    other.close()


def test_all_properties_and_field_types_reach_the_consumer(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    headers = {
        "str": "héllo",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "bool": True,
        "none": None,
        "bytes": b"\x00\x01\xff",
        "dec": decimal.Decimal("3.14"),
        "list": [1, "two", [3], {"four": 4}],
        "nested": {"a": {"b": {"c": "deep"}}},
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="reply-q",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="kind",
        user_id="guest",
        app_id="tests",
        cluster_id="c1",
    )
    ch.basic_publish("", q, b"payload", props)
    method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"payload"
    for name in (
        "content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
        "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id",
    ):
        assert getattr(got, name) == getattr(props, name), name
    assert got.headers == headers


def test_large_body_split_across_frames(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    big = bytes(range(256)) * 4096 * 4  # 4 MiB, far above frame_max
    ch.basic_publish("", q, big)
    ch.basic_publish("", q, b"")
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == big
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b""


def test_a_burst_of_large_messages_arrives_byte_for_byte(ch):
    """Large bodies published back to back are read in big chunks whose ends cut body frames;
    those frames go on in pieces rather than copied. Every body still arrives whole, in order."""
    import random

    rng = random.Random(7)
    q = ch.queue_declare("", exclusive=True).method.queue
    sent = [rng.randbytes(rng.randrange(17_000, 400_000)) for _ in range(30)]
    for i, body in enumerate(sent):
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=1 + i % 2))
    got = []
    for _ in range(len(sent)):
        _, _, body = ch.basic_get(q, auto_ack=True)
        got.append(body)
    assert [len(b) for b in got] == [len(b) for b in sent]
    assert got == sent


def test_transactions_commit_and_rollback(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back")
    ch.tx_rollback()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.basic_publish("", q, b"committed")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    method, _, body = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()  # the ack is undone: the message stays out until the channel closes
    ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_auto_delete_queue_goes_with_last_consumer(ch):
    ch.queue_declare("ad_q", auto_delete=True)
    t1 = ch.basic_consume("ad_q", lambda *a: None)
    t2 = ch.basic_consume("ad_q", lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare("ad_q", passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("ad_q", passive=True)
    assert e.value.reply_code == 404


def test_consumer_cancel_notification_on_queue_delete(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("doomed")
    cancelled = []
    ch.basic_consume("doomed", lambda *a: None)
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    other = hare.connect()
    other.channel().queue_delete("doomed")
    other.close()
    wait_for(lambda: c.process_data_events(time_limit=0.01) or cancelled, what="basic.cancel from the broker")
    c.close()


def test_prefetch_limits_unacked_deliveries(hare):
    c = hare.connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(10):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda chan, m, p, b: got.append(m.delivery_tag))
    wait_for(lambda: c.process_data_events(time_limit=0.02) or len(got) >= 3, what="3 deliveries")
    c.process_data_events(time_limit=0.2)
    assert len(got) == 3
    ch.basic_ack(got[-1], multiple=True)
    wait_for(lambda: c.process_data_events(time_limit=0.02) or len(got) >= 6, what="3 more deliveries")
    c.process_data_events(time_limit=0.2)
    assert len(got) == 6
    c.close()


def test_global_qos_limits_the_channel(hare):
    c = hare.connect()
    ch = c.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    for q in (q1, q2):
        for i in range(5):
            ch.basic_publish("", q, b"x")
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda chan, m, p, b: got.append(m.delivery_tag))
    ch.basic_consume(q2, lambda chan, m, p, b: got.append(m.delivery_tag))
    wait_for(lambda: c.process_data_events(time_limit=0.02) or len(got) >= 4, what="4 deliveries")
    c.process_data_events(time_limit=0.2)
    assert len(got) == 4
    c.close()


def test_exchange_to_exchange_binding_and_alternate_exchange(ch):
    ch.exchange_declare("e2e_src", "topic")
    ch.exchange_declare("e2e_dst", "fanout")
    ch.exchange_bind(destination="e2e_dst", source="e2e_src", routing_key="a.#")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "e2e_dst")
    ch.basic_publish("e2e_src", "a.b", b"via e2e")
    ch.basic_publish("e2e_src", "b.a", b"dropped")
    assert bodies(drain(ch, q, 1)) == [b"via e2e"]
    ch.exchange_unbind(destination="e2e_dst", source="e2e_src", routing_key="a.#")
    ch.basic_publish("e2e_src", "a.b", b"after unbind")

    ch.exchange_declare("ae", "fanout")
    ch.exchange_declare("with_ae", "direct", arguments={"alternate-exchange": "ae"})
    unrouted = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(unrouted, "ae")
    ch.basic_publish("with_ae", "no-binding", b"to the AE")
    assert bodies(drain(ch, unrouted, 1)) == [b"to the AE"]
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_channel_flow_and_many_channels(hare):
    c = hare.connect()
    channels = [c.channel() for _ in range(50)]
    q = channels[0].queue_declare("", exclusive=True).method.queue
    for i, chan in enumerate(channels):
        chan.basic_publish("", q, str(i).encode())
    assert channels[-1].queue_declare(q, passive=True).method.message_count == 50
    for chan in channels:
        chan.close()
    c.close()


def test_exchange_delete_if_unused_and_queue_delete_conditions(ch):
    ch.exchange_declare("busy_ex", "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "busy_ex", "k")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_delete("busy_ex", if_unused=True)
    assert e.value.reply_code == 406
    ch = ch.connection.channel()
    ch.queue_declare("full_q")
    ch.basic_publish("", "full_q", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_delete("full_q", if_empty=True)
    assert e.value.reply_code == 406
    ch = ch.connection.channel()
    assert ch.queue_delete("full_q").method.message_count == 1
    ch.exchange_delete("busy_ex")


def test_publishers_wait_for_slow_consumers(hare):
    """A queue whose consumer keeps taking messages, slower than they come, holds publishers
    back at about 8192 ready messages instead of taking everything they send. Once the
    consumer stops taking messages altogether (stalled), the queue stops holding publishers
    back for it."""
    import threading

    setup = hare.connect()
    sch = setup.channel()
    sch.queue_declare("flow_q")
    sch.queue_purge("flow_q")

    consuming = threading.Event()
    stop_consuming = threading.Event()

    def slow_consumer():
        c = hare.connect()
        ch = c.channel()
        ch.basic_qos(prefetch_count=1)
        def work(ch, m, p, b):
            time.sleep(0.002)  # the consumer's work: it takes at most 500 messages a second
            ch.basic_ack(m.delivery_tag)

        ch.basic_consume("flow_q", work)
        consuming.set()
        while not stop_consuming.is_set():
            c.process_data_events(time_limit=0.01)
        # Stalled from here on: subscribed, holding its one unacked message, reading nothing.
        stop_consuming.wait()
        return c

    conn_holder = []
    ct = threading.Thread(target=lambda: conn_holder.append(slow_consumer()))
    ct.start()
    consuming.wait(10)

    done = threading.Event()

    def publish():
        p = hare.connect()
        pch = p.channel()
        for i in range(60000):
            pch.basic_publish("", "flow_q", b"x" * 100)
        p.close()
        done.set()

    t = threading.Thread(target=publish)
    t.start()
    count = lambda: sch.queue_declare("flow_q", passive=True).method.message_count
    wait_for(lambda: count() > 8192, what="the queue to fill to its flow mark")
    # Held at the mark while the consumer keeps taking messages.
    peak = max(count() for _ in range(50))
    assert not done.is_set()
    assert peak < 8192 + 4000, peak
    # The consumer stops reading: the queue no longer holds the publisher back.
    stop_consuming.set()
    ct.join()
    wait_for(done.is_set, timeout=60, what="the publisher")
    t.join()
    assert count() > 30000
    conn_holder[0].close()
    sch.queue_delete("flow_q")
    setup.close()
