"""Durable definitions and persistent messages across clean restarts and SIGKILL."""
import os
import random
import subprocess
import threading
import time

import pika
import pytest
from pika.exceptions import AMQPError, ChannelClosedByBroker

from conftest import HARE_BIN, Hare, wait_for
from helpers import bodies, drain

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def test_definitions_survive_restart(fresh_hare):
    c = fresh_hare.connect()
    ch = c.channel()
    ch.exchange_declare("d_ae", "fanout", durable=True)
    ch.exchange_declare("d_topic", "topic", durable=True, arguments={"alternate-exchange": "d_ae"})
    ch.exchange_declare("d_headers", "headers", durable=True)
    ch.exchange_declare("t_exchange", "direct", durable=False)
    ch.exchange_declare("ad_exchange", "direct", durable=True, auto_delete=True)
    ch.queue_declare("d_q", durable=True, arguments={"x-message-ttl": 60000, "x-custom": "kept"})
    ch.queue_declare("d_unrouted", durable=True)
    ch.queue_declare("t_q", durable=False)
    ch.queue_declare("ad_q", durable=True, auto_delete=True)
    ch.queue_declare("ex_q", durable=True, exclusive=True)
    ch.queue_bind("d_q", "d_topic", "orders.#")
    ch.queue_bind("d_q", "d_headers", arguments={"x-match": "any", "kind": "a", "n": 5})
    ch.queue_bind("d_unrouted", "d_ae")
    ch.exchange_bind(destination="d_topic", source="amq.fanout")
    c.close()

    fresh_hare.restart()
    c = fresh_hare.connect()
    ch = c.channel()
    for name, kind in [("d_ae", "fanout"), ("d_topic", "topic"), ("d_headers", "headers")]:
        ch.exchange_declare(name, kind, durable=True, passive=True)
    ch.queue_declare("d_q", durable=True, arguments={"x-message-ttl": 60000, "x-custom": "kept"})
    for gone in ("t_exchange", "ad_exchange"):
        with pytest.raises(ChannelClosedByBroker) as e:
            c.channel().exchange_declare(gone, passive=True)
        assert e.value.reply_code == 404
    for gone in ("t_q", "ad_q", "ex_q"):
        with pytest.raises(ChannelClosedByBroker) as e:
            c.channel().queue_declare(gone, passive=True)
        assert e.value.reply_code == 404
    ch = c.channel()
    # Bindings came back: topic, headers (with typed arguments), e2e, and the alternate exchange.
    ch.basic_publish("d_topic", "orders.new", b"topic")
    ch.basic_publish("d_headers", "", b"headers", pika.BasicProperties(headers={"n": 5}))
    ch.basic_publish("amq.fanout", "orders.x", b"e2e")
    ch.basic_publish("d_topic", "nomatch", b"to the AE")
    assert bodies(drain(ch, "d_q", 3)) == [b"topic", b"headers", b"e2e"]
    assert bodies(drain(ch, "d_unrouted", 1)) == [b"to the AE"]
    c.close()


def test_persistent_messages_survive_clean_restart_and_kill(fresh_hare):
    c = fresh_hare.connect()
    ch = c.channel()
    ch.queue_declare("jobs", durable=True)
    ch.queue_declare("volatile", durable=False)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "jobs", f"p{i}".encode(), PERSISTENT)
    ch.basic_publish("", "jobs", b"transient")
    ch.basic_publish("", "volatile", b"gone", PERSISTENT)
    c.close()

    fresh_hare.restart(graceful=True)
    c = fresh_hare.connect()
    ch = c.channel()
    assert ch.queue_declare("jobs", durable=True, passive=True).method.message_count == 100
    # Ack ten, hold five unacked, then crash. tx.commit-ok means all of it is on disk.
    ch.tx_select()
    for _ in range(10):
        method, _, _ = ch.basic_get("jobs")
        ch.basic_ack(method.delivery_tag)
    held = [ch.basic_get("jobs") for _ in range(5)]
    assert [b for _, _, b in held] == [f"p{i}".encode() for i in range(10, 15)]
    ch.tx_commit()
    fresh_hare.restart(graceful=False)

    c = fresh_hare.connect()
    ch = c.channel()
    got = []
    while True:
        method, _, body = ch.basic_get("jobs", auto_ack=True)
        if method is None:
            break
        got.append((body, method.redelivered))
    assert [b for b, _ in got] == [f"p{i}".encode() for i in range(10, 100)]
    assert all(r for _, r in got[:5]) and not any(r for _, r in got[5:])
    with pytest.raises(ChannelClosedByBroker):
        c.channel().queue_declare("volatile", passive=True)
    c.close()


def test_data_dir_is_locked(fresh_hare):
    out = subprocess.run(
        [HARE_BIN, "--port", "0", "--data-dir", fresh_hare.data_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "in use by another hare process" in out.stdout + out.stderr
    assert fresh_hare.data_dir in out.stdout + out.stderr


def test_deep_backlog_pages_to_disk_and_drains_in_order(fresh_hare):
    c = fresh_hare.connect()
    ch = c.channel()
    ch.queue_declare("deep", durable=True)
    ch.tx_select()
    n = 20000
    for i in range(n):
        ch.basic_publish("", "deep", i.to_bytes(4, "big") + b"x" * 1000, PERSISTENT)
        if i % 1000 == 999:
            ch.tx_commit()
    ch.tx_commit()
    assert ch.queue_declare("deep", durable=True, passive=True).method.message_count == n
    c.close()
    fresh_hare.restart(graceful=False)
    c = fresh_hare.connect()
    ch = c.channel()
    assert ch.queue_declare("deep", durable=True, passive=True).method.message_count == n
    ch.basic_qos(prefetch_count=500)
    seen = []

    def on_message(chan, method, props, body):
        seen.append(int.from_bytes(body[:4], "big"))
        chan.basic_ack(method.delivery_tag)

    ch.basic_consume("deep", on_message)
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        c.process_data_events(time_limit=0.1)
    assert seen == list(range(n))
    c.close()


class CrashLedger:
    """What the clients know across crash cycles."""

    def __init__(self):
        self.lock = threading.Lock()
        self.confirmed = set()
        self.maybe = set()  # publish in flight when the broker died
        self.committed_acks = set()
        self.received = []  # (body, redelivered, cycle)
        self.acked_then_seen = []
        self.order_violations = []


def _publisher(hare, pid, counter, ledger, stop):
    try:
        c = hare.connect()
        ch = c.channel()
        ch.confirm_delivery()
        while not stop.is_set():
            seq = counter[pid]
            body = f"{pid}:{seq}".encode()
            # The sequence number is used up whatever happens: a publish in flight when the
            # broker dies may or may not have been stored, and is never sent again.
            counter[pid] = seq + 1
            try:
                with ledger.lock:
                    ledger.maybe.add(body)
                ch.basic_publish("", "crash_q", body, PERSISTENT)
            except AMQPError:
                return
            with ledger.lock:
                ledger.maybe.discard(body)
                ledger.confirmed.add(body)
    except AMQPError:
        return
    except OSError:
        return


def _consumer(hare, ledger, stop, cycle):
    last_first_seen = {}
    try:
        c = hare.connect()
        ch = c.channel()
        ch.basic_qos(prefetch_count=20)
        ch.tx_select()
        for method, props, body in ch.consume("crash_q", inactivity_timeout=0.05):
            if stop.is_set():
                break
            if method is None:
                continue
            with ledger.lock:
                if body in ledger.committed_acks:
                    ledger.acked_then_seen.append(body)
                ledger.received.append((body, method.redelivered, cycle))
                if not method.redelivered:
                    pid, seq = body.decode().split(":")
                    if last_first_seen.get(pid, -1) >= int(seq):
                        ledger.order_violations.append(body)
                    last_first_seen[pid] = int(seq)
            ch.basic_ack(method.delivery_tag)
            ch.tx_commit()
            with ledger.lock:
                ledger.committed_acks.add(body)
    except (AMQPError, OSError):
        return


def test_crash_loop_loses_no_confirmed_message():
    """Publishers with confirms and a consumer acking in transactions while the broker is
    killed with SIGKILL at random moments, 20 times."""
    rng = random.Random(int(os.environ.get("HARE_CRASH_SEED", "7")))
    hare = Hare()
    c = hare.connect()
    c.channel().queue_declare("crash_q", durable=True)
    c.close()
    ledger = CrashLedger()
    counter = {p: 0 for p in range(3)}
    started = time.monotonic()
    cycles = 20
    for cycle in range(cycles):
        stop = threading.Event()
        threads = [threading.Thread(target=_publisher, args=(hare, p, counter, ledger, stop)) for p in counter]
        threads.append(threading.Thread(target=_consumer, args=(hare, ledger, stop, cycle)))
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.2))  # a random moment to crash at, not a wait for a condition
        hare.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        hare._start()
    # Drain what is left with one consumer.
    c = hare.connect()
    ch = c.channel()
    while True:
        method, _, body = ch.basic_get("crash_q", auto_ack=True)
        if method is None:
            break
        with ledger.lock:
            if body in ledger.committed_acks:
                ledger.acked_then_seen.append(body)
            ledger.received.append((body, method.redelivered, cycles))
    c.close()
    hare.stop()
    elapsed = time.monotonic() - started

    seen = {b for b, _, _ in ledger.received}
    lost = ledger.confirmed - seen
    unknown = seen - ledger.confirmed - ledger.maybe
    print(
        f"crash loop: {cycles} cycles in {elapsed:.1f}s, {len(ledger.confirmed)} confirmed, "
        f"{len(ledger.received)} deliveries, {len(ledger.committed_acks)} acks committed, lost {len(lost)}"
    )
    assert len(ledger.confirmed) > 100
    assert not lost, f"confirmed messages lost: {sorted(lost)[:10]}"
    assert not unknown, f"messages nobody published: {sorted(unknown)[:10]}"
    history = {b: [(cyc, red) for (body, red, cyc) in ledger.received if body == b] for b in ledger.acked_then_seen[:5]}
    assert not ledger.acked_then_seen, f"acked messages came back: {history}"
    assert not ledger.order_violations, f"out of order: {ledger.order_violations[:10]}"


def test_memory_alarm_blocks_publishers():
    hare = Hare(extra_args=["--memory-limit", "1"])
    try:
        c = hare.connect()
        reasons = []
        c.add_on_connection_blocked_callback(lambda conn, frame: reasons.append(frame.method.reason))
        ch = c.channel()
        ch.queue_declare("blocked_q")
        for i in range(5):
            ch.basic_publish("", "blocked_q", str(i).encode())
        wait_for(lambda: c.process_data_events(time_limit=0.02) or reasons, what="connection.blocked")
        # RabbitMQ's words; the log says more.
        assert reasons[0] == "low on memory"
        observer = hare.connect().channel()
        # As in RabbitMQ, the publish that makes a connection a publisher goes through; the
        # rest wait in its socket while the alarm lasts.
        counts = set()
        for _ in range(10):
            c.process_data_events(time_limit=0.02)
            counts.add(observer.queue_declare("blocked_q", passive=True).method.message_count)
        assert counts <= {0, 1}
        assert "blocking publishers: memory use" in hare.read_log()
    finally:
        hare.stop()


def test_transient_messages_page_to_disk_when_memory_runs_short():
    """Past half the memory limit a non-durable queue pages to disk instead of growing, so
    the limit (which would block the publisher) is not reached."""
    hare = Hare(extra_args=["--memory-limit", "48MiB"])
    try:
        c = hare.connect()
        ch = c.channel()
        ch.queue_declare("big_transient")
        body = b"t" * 1024
        n = 60000  # ~60 MiB of bodies: more than the limit if held in memory
        for i in range(n):
            ch.basic_publish("", "big_transient", i.to_bytes(4, "big") + body)
        assert ch.queue_declare("big_transient", passive=True).method.message_count == n
        assert "paged to disk" in hare.read_log()
        assert "blocking publishers" not in hare.read_log()
        transient = os.path.join(hare.data_dir, "transient")
        assert any(files for _, _, files in os.walk(transient))
        # They come back in order.
        seen = 0
        for method, _, got in ch.consume("big_transient", auto_ack=True, inactivity_timeout=5):
            if method is None:
                break
            assert int.from_bytes(got[:4], "big") == seen
            seen += 1
            if seen == n:
                break
        assert seen == n
        c.close()
    finally:
        hare.stop()


def test_ttl_priorities_and_dead_letters_hold_across_restart(fresh_hare):
    """A TTL keeps counting from publish time across a restart, a dead-lettered message keeps
    its x-death, and a priority queue still hands out the highest priority first."""
    c = fresh_hare.connect()
    ch = c.channel()
    ch.exchange_declare("r_dlx", "fanout", durable=True)
    ch.queue_declare("r_dead", durable=True)
    ch.queue_bind("r_dead", "r_dlx")
    ch.queue_declare("r_ttl", durable=True, arguments={"x-message-ttl": 1500, "x-dead-letter-exchange": "r_dlx"})
    ch.queue_declare("r_rej", durable=True, arguments={"x-dead-letter-exchange": "r_dlx"})
    # No TTL of its own: only the message's expiration makes the queue's timers run.
    ch.queue_declare("r_exp", durable=True, arguments={"x-dead-letter-exchange": "r_dlx"})
    ch.queue_declare("r_prio", durable=True, arguments={"x-max-priority": 3})
    ch.confirm_delivery()
    ch.basic_publish("", "r_ttl", b"expires", PERSISTENT)
    ch.basic_publish("", "r_rej", b"rejected", PERSISTENT)
    ch.basic_publish("", "r_exp", b"its own expiration", pika.BasicProperties(delivery_mode=2, expiration="1500"))
    for prio, body in [(1, b"p1"), (3, b"p3"), (2, b"p2")]:
        ch.basic_publish("", "r_prio", body, pika.BasicProperties(delivery_mode=2, priority=prio))
    method, _, _ = ch.basic_get("r_rej")
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_for(lambda: ch.queue_declare("r_dead", durable=True, passive=True).method.message_count == 1, what="dead letter")
    c.close()

    fresh_hare.restart()
    c = fresh_hare.connect()
    ch = c.channel()

    def dead_count():
        return ch.queue_declare("r_dead", durable=True, passive=True).method.message_count

    wait_for(lambda: dead_count() == 3, timeout=10, what="the TTLs to run out after the restart")
    assert ch.queue_declare("r_ttl", durable=True, passive=True).method.message_count == 0
    assert ch.queue_declare("r_exp", durable=True, passive=True).method.message_count == 0
    got = {}
    for _ in range(3):
        method, props, body = ch.basic_get("r_dead", auto_ack=True)
        got[body] = props.headers["x-death"][0]
    assert got[b"rejected"]["reason"] == "rejected" and got[b"rejected"]["queue"] == "r_rej"
    assert got[b"expires"]["reason"] == "expired" and got[b"expires"]["queue"] == "r_ttl"
    assert got[b"its own expiration"]["reason"] == "expired" and got[b"its own expiration"]["queue"] == "r_exp"
    order = [ch.basic_get("r_prio", auto_ack=True)[2] for _ in range(3)]
    assert order == [b"p3", b"p2", b"p1"]
    c.close()
