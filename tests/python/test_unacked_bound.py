"""A channel holds a bounded number of unacknowledged deliveries whatever its prefetch: a
consumer with prefetch 0 (unlimited, as RabbitMQ means it) that never acknowledges stops
receiving at the broker's bound instead of pulling the whole queue into memory, receives again
as it acknowledges, and basic.get on a channel at the bound is refused with 406."""
import pika
import pytest

from conftest import Hare, wait_for

COUNT_LIMIT = 100
BYTES_LIMIT = 10 * 1024
MESSAGES = 500


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    config = tmp_path_factory.mktemp("unacked") / "hare.toml"
    config.write_text(
        f'max_unacked_per_channel = {COUNT_LIMIT}\nmax_unacked_bytes_per_channel = "{BYTES_LIMIT}"\n'
    )
    h = Hare(extra_args=["--config", str(config)])
    yield h
    h.stop()


def fill(hare, queue, body):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare(queue)
    ch.confirm_delivery()
    for i in range(MESSAGES):
        ch.basic_publish("", queue, body(i))
    return c, ch


def ready(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def consume_until(conn, received, count, check_ch, queue, ready_left, what):
    """Runs the consumer's connection until it holds `count` deliveries and the queue has
    `ready_left` ready, which together say the broker dispatched exactly `count`."""
    def done():
        conn.process_data_events(time_limit=0.05)
        return len(received) == count and ready(check_ch, queue) == ready_left

    wait_for(done, timeout=20, what=what)


def test_prefetch_zero_consumer_stops_at_the_channel_bound_and_resumes_on_ack(bounded):
    checker, check_ch = fill(bounded, "unacked.count", lambda i: str(i).encode())
    conn = bounded.connect()
    ch = conn.channel()
    received = []
    ch.basic_consume("unacked.count", lambda c, m, p, b: received.append((m.delivery_tag, b)))
    consume_until(conn, received, COUNT_LIMIT, check_ch, "unacked.count", MESSAGES - COUNT_LIMIT, "the first 100")
    assert [b for _, b in received] == [str(i).encode() for i in range(COUNT_LIMIT)]

    # Half acknowledged: exactly that many more come, in order.
    ch.basic_ack(received[COUNT_LIMIT // 2 - 1][0], multiple=True)
    consume_until(conn, received, COUNT_LIMIT + COUNT_LIMIT // 2, check_ch, "unacked.count", MESSAGES - 150, "50 more")
    assert [b for _, b in received] == [str(i).encode() for i in range(150)]

    # basic.get on the full channel: refused, and only that channel is closed.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_get("unacked.count")
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - reached maximum ({COUNT_LIMIT} messages, {BYTES_LIMIT} bytes) "
        "of unacknowledged deliveries per channel"
    )
    assert conn.is_open
    # The closed channel's 100 unacknowledged went back: every message is still there.
    wait_for(lambda: ready(check_ch, "unacked.count") == MESSAGES - 50, what="requeue on channel close")
    conn.close()
    checker.close()


def test_the_byte_bound_stops_a_consumer_of_large_messages(bounded):
    body = b"x" * 1024
    checker, check_ch = fill(bounded, "unacked.bytes", lambda i: body)
    conn = bounded.connect()
    ch = conn.channel()
    received = []
    ch.basic_consume("unacked.bytes", lambda c, m, p, b: received.append(m.delivery_tag))
    # 10 messages of a little over 1 KiB reach 10 KiB; the 10th is the last let through.
    consume_until(conn, received, 10, check_ch, "unacked.bytes", MESSAGES - 10, "10 messages")
    ch.basic_ack(received[-1], multiple=True)
    consume_until(conn, received, 20, check_ch, "unacked.bytes", MESSAGES - 20, "10 more after the ack")
    conn.close()
    checker.close()


def test_acknowledging_consumers_and_auto_ack_are_not_limited(bounded):
    checker, check_ch = fill(bounded, "unacked.flowing", lambda i: b"m")
    conn = bounded.connect()
    ch = conn.channel()
    received = []

    def on_message(c, m, p, b):
        received.append(b)
        c.basic_ack(m.delivery_tag)

    ch.basic_consume("unacked.flowing", on_message)
    consume_until(conn, received, MESSAGES, check_ch, "unacked.flowing", 0, "every message, acked one by one")

    ch.close()
    for i in range(MESSAGES):
        check_ch.basic_publish("", "unacked.flowing", b"n")
    auto = []
    ch2 = conn.channel()
    ch2.basic_consume("unacked.flowing", lambda c, m, p, b: auto.append(b), auto_ack=True)
    consume_until(conn, auto, MESSAGES, check_ch, "unacked.flowing", 0, "every message, auto-ack")
    conn.close()
    checker.close()
