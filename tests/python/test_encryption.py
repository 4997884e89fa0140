"""Encryption at rest through pika: with a key file, no message body, property or queue name
is on disk in the clear; a restart with the key recovers every confirmed message; without the
key, or with another, the broker refuses to start and names the problem; a rotated key reads
what the old one sealed."""
import os
import subprocess

import pika

from conftest import HARE_BIN, Hare

SECRET = b"card-4111-1111-1111-1111"
QUEUE = "payroll-queue-7f3a"


def key_file(d, name, byte):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(bytes([byte]).hex() * 32 + "\n")
    return path


def files_under(root):
    for base, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(base, n), "rb") as f:
                yield os.path.join(base, n), f.read()


def publish(h, n, tag):
    c = h.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare(QUEUE, durable=True, arguments={"x-note": "salary"})
    for i in range(n):
        ch.basic_publish("", QUEUE, SECRET + f" {tag} {i}".encode(),
                         pika.BasicProperties(delivery_mode=2, headers={"employee": "alice-hidden"}),
                         mandatory=True)
    c.close()


def drain(h, limit):
    c = h.connect()
    ch = c.channel()
    got = []
    for _ in range(limit):
        m, props, body = ch.basic_get(QUEUE, auto_ack=True)
        if m is None:
            break
        assert props.headers == {"employee": "alice-hidden"}
        got.append(body)
    c.close()
    return got


def refused(h, *args):
    """Runs the broker on h's data directory, expecting it to refuse to start; returns its output."""
    p = subprocess.run([HARE_BIN, "--port", "0", "--management-port", "0", "--data-dir", h.data_dir, *args],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_no_plaintext_on_disk_and_restart_needs_the_key(tmp_path):
    key = key_file(tmp_path, "key", 0x11)
    h = Hare(extra_args=["--encryption-key-file", key])
    try:
        publish(h, 200, "a")
        h.kill()
        for path, data in files_under(h.data_dir):
            # The audit log is for operators to read: it names objects (in the clear, as
            # docs/storage.md says) but never holds a message's body or properties.
            audit = os.path.basename(path).startswith("audit.log")
            for needle in (SECRET, b"alice-hidden") + (() if audit else (QUEUE.encode(), b"salary")):
                assert needle not in data, f"{needle!r} in the clear in {path}"
        # Without the key, with another key, with a malformed key file: refused, named.
        out = refused(h)
        assert "is encrypted" in out and "encryption_key_file" in out, out
        out = refused(h, "--encryption-key-file", key_file(tmp_path, "other", 0x22))
        assert "is not the key the data directory" in out, out
        with open(tmp_path / "short", "w") as f:
            f.write("abc\n")
        out = refused(h, "--encryption-key-file", str(tmp_path / "short"))
        assert "must hold a 256-bit key" in out, out
        # With the key everything is back.
        h.extra_args = ["--encryption-key-file", key]
        h._start()
        got = drain(h, 300)
        assert got == [SECRET + f" a {i}".encode() for i in range(200)]
    finally:
        h.stop()


def test_key_rotation_reads_old_data_and_writes_with_the_new_key(tmp_path):
    old = key_file(tmp_path, "old", 0x33)
    new = key_file(tmp_path, "new", 0x44)
    config = tmp_path / "hare.toml"
    config.write_text(f'encryption_key_file = "{new}"\nencryption_previous_key_files = ["{old}"]\n')
    h = Hare(extra_args=["--encryption-key-file", old])
    try:
        publish(h, 50, "old")
        h.stop()
        # The new key alone cannot read what the old one sealed.
        out = refused(h, "--encryption-key-file", new)
        assert "list the old key file in encryption_previous_key_files" in out, out
        h.extra_args = ["--config", str(config)]
        h._start()
        assert "encryption key rotated" in h.read_log()
        publish(h, 50, "new")
        got = drain(h, 60)
        assert got == [SECRET + f" old {i}".encode() for i in range(50)] + \
            [SECRET + f" new {i}".encode() for i in range(10)]
        h.restart()
        # What is left was written with the new key, which now opens the directory alone.
        h.stop()
        h.extra_args = ["--encryption-key-file", new]
        h._start()
        assert drain(h, 100) == [SECRET + f" new {i}".encode() for i in range(10, 50)]
    finally:
        h.stop()


def test_a_stream_under_encryption_keeps_no_plaintext_and_is_sent_opened(tmp_path):
    """A stream's chunks (and its named publisher, in each chunk's trailer) are sealed on disk;
    a stream protocol consumer gets them opened, with the checksum clients verify, and so
    does an AMQP 0-9-1 consumer."""
    import asyncio

    from rstream import AMQPMessage, Consumer, ConsumerOffsetSpecification, OffsetType, Producer, amqp_decoder

    from conftest import wait_for
    from helpers import free_ports
    (port,) = free_ports(1)
    key = key_file(tmp_path, "key", 0x33)
    h = Hare(extra_args=["--encryption-key-file", key, "--stream-port", str(port)])
    try:
        wait_for(lambda: "stream protocol listening" in h.read_log(), what="the stream listener")

        async def go():
            async with Producer("127.0.0.1", port=port, username="guest", password="guest") as p:
                await p.create_stream("sealed-stream")
                for i in range(20):
                    await p.send_wait("sealed-stream", AMQPMessage(body=SECRET + b" %d" % i),
                                      publisher_name="payroll-writer-9")
            got, done = [], asyncio.Event()

            async def on(msg, ctx):
                got.append((ctx.offset, bytes(msg.body) if isinstance(msg.body, (bytes, bytearray))
                            else b"".join(msg.body)))
                if len(got) == 20:
                    done.set()
            async with Consumer("127.0.0.1", port=port, username="guest", password="guest") as c:
                await c.start()
                await c.subscribe("sealed-stream", on, decoder=amqp_decoder,
                                  offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST))
                await asyncio.wait_for(done.wait(), 10)
            return got
        assert asyncio.run(asyncio.wait_for(go(), 30)) == [(i, SECRET + b" %d" % i) for i in range(20)]
        for path, data in files_under(os.path.join(h.data_dir, "streams")):
            for needle in (SECRET, b"payroll-writer-9"):
                assert needle not in data, f"{needle!r} in the clear in {path}"
        c = h.connect()
        ch = c.channel()
        ch.basic_qos(prefetch_count=50)
        received = []
        ch.basic_consume("sealed-stream", lambda c_, d, p, b: received.append(b), arguments={"x-stream-offset": "first"})
        wait_for(lambda: c.process_data_events(time_limit=0.05) or len(received) == 20, what="20 AMQP deliveries")
        assert received == [SECRET + b" %d" % i for i in range(20)]
        c.close()
    finally:
        h.stop()
