"""Durable definitions go through a journal: a declare-ok, bind-ok or delete-ok is sent only
once its change is on disk, so kill -9 in the middle of a storm of declares loses none that
was answered, and brings back none whose delete was answered."""
import threading
import time

import pika

from conftest import Hare

WORKERS = 4
# The storm ends with a kill once this many queues are declared and bound, or this many
# seconds have passed.
TARGET = 1200
STORM_SECONDS = 60


def storm(hare, worker, answered, stop):
    """Declares durable queues and binds each (topic, exchange-to-exchange for some), deletes
    one in five again; records each step once its -ok has arrived."""
    try:
        c = hare.connect()
        ch = c.channel()
        i = 0
        while not stop.is_set():
            q = f"storm-{worker}-{i}"
            ch.queue_declare(q, durable=True)
            answered["queues"].add(q)
            key = f"k.{worker}.{i}"
            ch.queue_bind(q, "amq.topic", routing_key=key)
            answered["bindings"].add((q, key))
            if i % 10 == 3:
                ex = f"storm-x-{worker}-{i}"
                ch.exchange_declare(ex, "fanout", durable=True)
                ch.exchange_bind(ex, "amq.topic", routing_key=f"x.{worker}.{i}")
                ch.queue_bind(q, ex)
                answered["exchanges"].add((ex, q, f"x.{worker}.{i}"))
            if i % 5 == 4:
                # Until its delete-ok arrives, the queue may or may not be gone after a kill.
                answered["deleting"].add(q)
                ch.queue_delete(q)
                answered["deleted"].add(q)
            i += 1
    except (pika.exceptions.AMQPError, OSError):
        # The broker was killed under us.
        pass


def ballast(hare, stop):
    """Persistent messages published without waiting: each group commit has megabytes to
    write, so a change waits longer for its fsync and a reply sent too early would show."""
    try:
        c = hare.connect()
        ch = c.channel()
        ch.queue_declare("ballast", durable=True, arguments={"x-max-length": 200})
        body = b"b" * 256 * 1024
        # Paced at about 25 MB/s: each group commit still carries megabytes, but the disk is
        # not so saturated that the storm's declares starve (unpaced, 23 to 89 were answered
        # in 60 s, depending on the disk).
        while not stop.wait(0.01):
            ch.basic_publish("", "ballast", body, pika.BasicProperties(delivery_mode=2))
    except (pika.exceptions.AMQPError, OSError):
        pass


def test_kill_during_a_declare_storm_loses_nothing_answered(fresh_hare):
    answered = {"queues": set(), "bindings": set(), "exchanges": set(), "deleting": set(), "deleted": set()}
    stop = threading.Event()
    threads = [threading.Thread(target=storm, args=(fresh_hare, w, answered, stop)) for w in range(WORKERS)]
    threads.append(threading.Thread(target=ballast, args=(fresh_hare, stop)))
    for t in threads:
        t.start()
    deadline = time.monotonic() + STORM_SECONDS
    while len(answered["queues"]) < TARGET and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh_hare.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    declared = len(answered["queues"])
    # Each declare waits for a group commit that also carries tens of megabytes of ballast,
    # so how many are answered in the time depends on the disk (89 in one run here, over 100
    # in others);
    # 40 is enough for the kill to land in the middle of the storm.
    assert declared >= 40, f"only {declared} declares answered"

    fresh_hare.restart(graceful=False)
    c = fresh_hare.connect()
    ch = c.channel()
    # Declared and never asked to be deleted: must be there.
    alive = answered["queues"] - answered["deleting"]
    for q in sorted(alive):
        # Passive: a missing queue closes the channel with 404 and fails the test.
        ch.queue_declare(q, passive=True)
    # Every answered binding routes: one message per key, counted in its queue.
    for q, key in sorted(answered["bindings"]):
        if q in alive:
            ch.basic_publish("amq.topic", key, b"k")
    for ex, q, key in sorted(answered["exchanges"]):
        if q in alive:
            ch.basic_publish("amq.topic", key, b"x")
    expect = {q: 0 for q in alive}
    for q, _ in answered["bindings"]:
        if q in alive:
            expect[q] += 1
    for _, q, _ in answered["exchanges"]:
        if q in alive:
            expect[q] += 1
    # A publish on a channel is routed before a later declare on it is answered.
    for q in sorted(alive):
        got = ch.queue_declare(q, passive=True).method.message_count
        assert got == expect[q], f"{q}: {got} messages routed, {expect[q]} expected"
    # A deleted queue stays deleted.
    for q in sorted(answered["deleted"]):
        probe = c.channel()
        try:
            probe.queue_declare(q, passive=True)
            raise AssertionError(f"{q} was deleted (delete-ok answered) but came back")
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
    c.close()
    print(f"{declared} queues declared, {len(answered['deleted'])} deleted before the kill; all as answered")
