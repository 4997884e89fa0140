"""Process limits: the broker raises its open files limit at start, and lives within it: queue
files beyond their share are closed and opened again on use. Each AMQP socket's send buffer is
bounded (tcp_sndbuf)."""
import os
import re
import resource
import shutil
import subprocess
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


def _send_buffers(port):
    """The send buffer (ss's skmem `tb`) of the broker's side of each connection on `port`."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return [int(n) for n in re.findall(r"\btb(\d+)", out)]


def _held_send_buffer(h):
    """Opens a connection to `h` and returns its socket's send buffer as the broker set it."""
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", h.port))
    try:
        return wait_for(lambda: _send_buffers(h.port), what="the connection in ss")[0]
    finally:
        c.close()


def test_each_amqp_socket_gets_the_configured_send_buffer(tmp_path):
    """tcp_sndbuf (RabbitMQ's tcp_listen_options.sndbuf) is asked for on every accepted socket:
    Linux doubles it and caps it at net.core.wmem_max. 512 KiB by default; 0 leaves the
    buffer to the kernel's autotuning."""
    with open("/proc/sys/net/core/wmem_max") as f:
        wmem_max = int(f.read())
    fixed = lambda asked: 2 * min(asked, wmem_max)
    h = Hare()
    try:
        assert _held_send_buffer(h) == fixed(512 * 1024)
    finally:
        h.stop()
    config = tmp_path / "hare.toml"
    config.write_text('tcp_sndbuf = "128KiB"\n')
    h = Hare(extra_args=["--config", str(config)])
    try:
        assert _held_send_buffer(h) == fixed(128 * 1024)
    finally:
        h.stop()
    config.write_text('tcp_sndbuf = "0"\n')
    h = Hare(extra_args=["--config", str(config)])
    try:
        autotuned = _held_send_buffer(h)
        assert autotuned not in (fixed(512 * 1024), fixed(128 * 1024)), autotuned
    finally:
        h.stop()


def test_a_send_buffer_too_large_is_a_config_error(tmp_path):
    config = tmp_path / "hare.toml"
    config.write_text('tcp_sndbuf = "2GiB"\n')
    from conftest import HARE_BIN

    out = subprocess.run(
        [HARE_BIN, "--config", str(config), "--port", "0", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "tcp_sndbuf: expected a size up to 1 GiB" in out.stdout + out.stderr
