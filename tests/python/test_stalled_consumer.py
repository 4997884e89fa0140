"""A consumer that stops reading its socket must cost its queue's publishers nothing: it is
not eligible for deliveries while its connection cannot take more bytes, the queue keeps
taking and confirming publishes as if it had no consumer, and the consumer gets every
message, in order, once it reads again. Each way a client can stall is covered."""
import threading
import time

import pika
import pytest

from conftest import wait_for
from helpers import PeakRss

MESSAGES = 100_000
BODY = 256
# What the broker may hold for this test: 100,000 messages of 256 bytes in memory, plus the
# stalled connection's bounded outbound buffer and the rest of the process.
RSS_BOUND_KIB = 300 * 1024


def publish_confirmed(hare, queues, count, deadline_s=120, window=512):
    """Publishes `count` messages round-robin over `queues` (body: the message's number) and
    waits for every confirm, at most `window` unconfirmed at a time (aio-pika's aiormq
    channel; confirms arrive in order, so the oldest is awaited first)."""
    import asyncio
    import collections

    import aio_pika

    async def run():
        conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{hare.port}/")
        async with conn:
            ch = await (await conn.channel(publisher_confirms=True)).get_underlay_channel()
            pending = collections.deque()
            for i in range(count):
                body = str(i).encode().ljust(BODY, b".")
                pending.append(asyncio.ensure_future(ch.basic_publish(body, routing_key=queues[i % len(queues)])))
                if len(pending) >= window:
                    await pending.popleft()
            await asyncio.gather(*pending)

    asyncio.run(asyncio.wait_for(run(), deadline_s))


class Stalled:
    """A pika client that consumes and then stops reading its socket until resumed."""

    def __init__(self, hare, queues, mode):
        self.conn = hare.connect()
        self.got = {q: [] for q in queues}
        self.by_channel = {}
        channels = 10 if mode == "many-channels" else 1
        for n in range(channels):
            ch = self.conn.channel()
            if mode == "prefetch-large":
                ch.basic_qos(prefetch_count=50_000)
            auto_ack = mode in ("auto-ack", "several-queues", "many-channels")
            for q in queues:
                ch.basic_consume(q, self._on_message(q, auto_ack), auto_ack=auto_ack)

    def _on_message(self, q, auto_ack):
        def on_message(ch, method, props, body):
            self.got[q].append(int(body.rstrip(b".")))
            self.by_channel.setdefault((ch.channel_number, q), []).append(int(body.rstrip(b".")))
            if not auto_ack:
                ch.basic_ack(method.delivery_tag)

        return on_message

    def resume(self, expect, deadline_s=120):
        deadline = time.monotonic() + deadline_s
        while sum(len(v) for v in self.got.values()) < expect and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        self.conn.close()


@pytest.mark.parametrize("mode", ["auto-ack", "prefetch-0", "prefetch-large", "many-channels", "several-queues"])
def test_stalled_consumer_does_not_slow_publishers(hare, mode):
    queues = [f"stall_{mode}_{i}" for i in range(3 if mode == "several-queues" else 1)]
    setup = hare.connect()
    sch = setup.channel()
    for q in queues + ["stall_other"]:
        sch.queue_declare(q)
        sch.queue_purge(q)
    stalled = Stalled(hare, queues, mode)

    # A healthy consumer of another queue, on another connection, keeps receiving meanwhile.
    other_got = []
    stop = threading.Event()

    def healthy():
        c = hare.connect()
        ch = c.channel()
        ch.basic_consume("stall_other", lambda *a: other_got.append(a[3]), auto_ack=True)
        while not stop.is_set():
            c.process_data_events(time_limit=0.05)
        c.close()

    t = threading.Thread(target=healthy)
    t.start()
    peak = PeakRss(hare.proc.pid)
    try:
        t0 = time.monotonic()
        publish_confirmed(hare, queues, MESSAGES)
        print(f"{mode}: {MESSAGES} confirmed publishes in {time.monotonic() - t0:.1f} s")
        # The other queue's consumer is served while the stalled one holds its buffer full.
        for i in range(100):
            sch.basic_publish("", "stall_other", b"o%d" % i)
        wait_for(lambda: len(other_got) == 100, timeout=30, what="the healthy consumer's messages")
        t0 = time.monotonic()
        stalled.resume(MESSAGES)
        print(f"{mode}: the stalled consumer drained them in {time.monotonic() - t0:.1f} s")
    finally:
        top = peak.done()
        stop.set()
        t.join()
    got = [n for q in queues for n in stalled.got[q]]
    assert len(got) == MESSAGES, (len(got), MESSAGES)
    # Nothing lost or duplicated: message i went to queue i % len(queues).
    for k, q in enumerate(queues):
        assert sorted(stalled.got[q]) == list(range(k, MESSAGES, len(queues)))
    # In order: each channel saw each queue's messages in publish order (pika hands a
    # connection's deliveries to the callbacks channel by channel).
    for seen in stalled.by_channel.values():
        assert seen == sorted(seen)
    assert top < RSS_BOUND_KIB, f"broker RSS peaked at {top} KiB"
    for q in queues + ["stall_other"]:
        sch.queue_delete(q)
    setup.close()
