"""Process limits: the broker raises its open files limit at start, and lives within it: queue
files beyond their share are closed and opened again on use."""
import os
import resource
import shutil
import threading

import pika

from conftest import Hare, wait_for


def test_open_files_soft_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Start the broker with Debian's default soft limit under whatever hard limit there is.
    low = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        h = Hare()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{h.proc.pid}/limits") as f:
            line = next(l for l in f if l.startswith("Max open files"))
        now_soft, now_hard = line.split()[3:5]
        assert now_soft == now_hard, line
        if low < hard:
            wait_for(lambda: f"open files limit raised from {low} to" in h.read_log(), what="the log line")
    finally:
        h.stop()


QUEUES = 20_000
WORKERS = 4


def declare_and_fill(hare, worker, errors):
    """Declares this worker's share of the durable queues, one persistent message in each."""
    try:
        c = hare.connect()
        ch = c.channel()
        for i in range(worker, QUEUES, WORKERS):
            q = f"many-{i}"
            ch.queue_declare(q, durable=True)
            ch.basic_publish("", q, f"message {i}".encode(), pika.BasicProperties(delivery_mode=2))
        c.close()
    except Exception as e:  # reported by the test, not lost in the thread
        errors.append(repr(e))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_twenty_thousand_durable_queues_under_a_limit_of_1024_open_files():
    h = Hare(open_files=1024)
    try:
        errors = []
        threads = [threading.Thread(target=declare_and_fill, args=(h, w, errors)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors[:3]
        assert fds(h.proc.pid) < 1024
        h.restart()
        c = h.connect()
        ch = c.channel()
        for i in range(QUEUES):
            n = ch.queue_declare(f"many-{i}", passive=True).method.message_count
            assert n == 1, f"many-{i}: {n} messages after the restart"
        # Reading and acking opens segment and ack files again, within the budget.
        for i in range(0, QUEUES, 97):
            method, _, body = ch.basic_get(f"many-{i}")
            assert body == f"message {i}".encode()
            ch.basic_ack(method.delivery_tag)
        c.close()
        assert fds(h.proc.pid) < 1024
        log = h.read_log()
        assert "Too many open files" not in log
        assert "up to 240 for queue files" in log
    finally:
        h.stop()
        shutil.rmtree(h.dir, ignore_errors=True)


def test_connections_beyond_their_share_of_descriptors_are_refused():
    # 200 descriptors: 64 kept in reserve, 34 for files, 102 for connections.
    h = Hare(open_files=200)
    conns = []
    try:
        wait_for(lambda: "102 for connections" in h.read_log(), what="the budget in the log")
        for _ in range(102):
            conns.append(h.connect())
        try:
            extra = h.connect(connection_attempts=1)
            extra.close()
            raise AssertionError("a connection beyond the budget was accepted")
        except pika.exceptions.AMQPConnectionError:
            pass
        wait_for(lambda: "file descriptor limit: connection from" in h.read_log(), what="the warning")
        # Closing one makes room for another (once the broker has seen it end).
        conns.pop().close()

        def reconnect():
            try:
                return h.connect(connection_attempts=1)
            except pika.exceptions.AMQPConnectionError:
                return None

        c = wait_for(reconnect, what="a connection once one was closed")
        assert c.channel().queue_declare("", exclusive=True).method.queue
        conns.append(c)
    finally:
        for c in conns:
            if c.is_open:
                c.close()
        h.stop()
        shutil.rmtree(h.dir, ignore_errors=True)
