"""Writes the fuzz targets' seed corpus from real client sessions: pika (PLAIN and AMQPLAIN
logins, declares with arguments, publishes with properties and headers, consumes, acks,
a transaction, confirms) and HTTP requests to the management API, each through a small
recording proxy in front of a hare started here. The frames are cut from what the clients
sent and filed under fuzz/corpus/<target>/.

    HARE_BIN=target/release/hare .venv/bin/python fuzz/seeds.py
"""
import base64
import decimal
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pika

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARE = os.environ.get("HARE_BIN", os.path.join(ROOT, "target", "release", "hare"))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


class Recorder:
    """A TCP proxy on an ephemeral port that keeps every byte each client sent, per connection."""

    def __init__(self, port):
        self.target = port
        self.sessions = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            sent = bytearray()
            self.sessions.append(sent)
            threading.Thread(target=self.pipe, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def pipe(src, dst, keep):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if keep is not None:
                keep.extend(data)
            dst.sendall(data)


def wait_log(path, pattern, deadline=10):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with open(path) as f:
            m = re.search(pattern, f.read())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise SystemExit(f"hare did not log {pattern}")


def amqp_session(port):
    params = pika.ConnectionParameters("127.0.0.1", port, client_properties={"product": "seed", "n": 1})
    c = pika.BlockingConnection(params)
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("seed.x", "topic", durable=True, arguments={"alternate-exchange": "amq.fanout"})
    ch.queue_declare("seed.q", durable=True, arguments={
        "x-max-length": 1000, "x-message-ttl": 60000, "x-dead-letter-exchange": "seed.x",
        "x-max-priority": 5, "x-queue-mode": "lazy", "x-single-active-consumer": False})
    ch.queue_bind("seed.q", "seed.x", "a.*.#", arguments={"x-match": "all", "k": [1, decimal.Decimal("2.5"), "s"]})
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2, priority=3,
        correlation_id="c1", reply_to="replies", expiration="5000", message_id="m1",
        timestamp=1700000000, type="t", user_id="guest", app_id="seed",
        headers={"x-int": 7, "x-str": "v", "x-nested": {"a": [True, None, decimal.Decimal("1.5")]}, "x-dec": 2**40})
    ch.basic_publish("seed.x", "a.b.c", b'{"hello": "world"}', props, mandatory=True)
    ch.basic_publish("", "seed.q", b"x" * 5000, pika.BasicProperties(delivery_mode=1))
    ch.basic_qos(prefetch_count=10)
    got = []
    tag = ch.basic_consume("seed.q", lambda c_, m, p, b: (got.append(b), c_.basic_ack(m.delivery_tag)),
                           arguments={"x-priority": 2})
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        c.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    tx = c.channel()
    tx.tx_select()
    tx.basic_publish("", "seed.q", b"in a transaction")
    tx.tx_commit()
    m, _, _ = tx.basic_get("seed.q")
    if m:
        tx.basic_reject(m.delivery_tag, requeue=True)
    tx.queue_purge("seed.q")
    tx.queue_unbind("seed.q", "seed.x", "a.*.#", arguments={"x-match": "all", "k": [1, decimal.Decimal("2.5"), "s"]})
    tx.queue_delete("seed.q")
    tx.exchange_delete("seed.x")
    c.close()


def amqplain_session(port):
    """pika speaks only PLAIN and EXTERNAL: an AMQPLAIN start-ok by hand."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"AMQP\x00\x00\x09\x01")
    s.recv(65536)
    login = table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    args = table({"product": "seed"}) + shortstr(b"AMQPLAIN") + longstr(login) + shortstr(b"en_US")
    s.sendall(frame(1, 0, struct.pack(">HH", 10, 11) + args))
    s.recv(65536)
    s.close()


def shortstr(b):
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def table(d):
    body = b"".join(shortstr(k.encode()) + b"S" + longstr(v.encode()) for k, v in d.items())
    return struct.pack(">I", len(body)) + body


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def http_session(port):
    auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    def call(method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
        req.add_header("Authorization", auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError:
            pass

    call("GET", "/api/overview")
    call("PUT", "/api/vhosts/seed")
    call("PUT", "/api/users/app", {"password": "pw", "tags": "management"})
    call("PUT", "/api/permissions/seed/app", {"configure": "^app\\.", "write": ".*", "read": ".*"})
    call("PUT", "/api/topic-permissions/seed/app", {"exchange": "amq.topic", "write": "^a", "read": ".*"})
    call("PUT", "/api/queues/%2F/h.q", {"durable": True, "arguments": {"x-max-length": 5}})
    call("PUT", "/api/exchanges/%2F/h.x", {"type": "direct", "durable": False})
    call("POST", "/api/bindings/%2F/e/h.x/q/h.q", {"routing_key": "k", "arguments": {}})
    call("POST", "/api/exchanges/%2F/h.x/publish",
         {"routing_key": "k", "payload": "aGk=", "payload_encoding": "base64", "properties": {"headers": {"a": 1}}})
    call("POST", "/api/queues/%2F/h.q/get", {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"})
    call("GET", "/api/queues?page=1&page_size=10&name=h&use_regex=true&sort=name&sort_reverse=true&columns=name,messages")
    call("GET", "/api/queues/%2F/h.q?msg_rates_age=60&msg_rates_incr=5")
    call("GET", "/api/definitions")
    call("POST", "/api/definitions", {"users": [{"name": "imp", "password_hash": "", "tags": ""}],
                                      "vhosts": [{"name": "v2"}], "queues": [{"name": "iq", "vhost": "/"}]})
    call("PUT", "/api/vhost-limits/seed/max-queues", {"value": 10})
    call("DELETE", "/api/queues/%2F/h.q/contents")
    call("DELETE", "/api/queues/%2F/h.q?if-empty=true")
    call("DELETE", "/api/users/app")
    call("GET", "/api/health/checks/alarms")
    call("GET", "/api/aliveness-test/%2F")
    call("GET", "/metrics/per-object")


def split_frames(stream):
    """(kind, channel, payload) of each frame after the protocol header."""
    pos = 8 if stream.startswith(b"AMQP") else 0
    while pos + 8 <= len(stream):
        kind, channel, size = struct.unpack(">BHI", stream[pos:pos + 7])
        yield kind, channel, stream[pos + 7:pos + 7 + size]
        pos += 8 + size


def tables_in(payload):
    """Every complete field table that starts somewhere in `payload` (a crude scan)."""
    for i in range(len(payload) - 4):
        n = struct.unpack(">I", payload[i:i + 4])[0]
        if 0 < n <= len(payload) - i - 4 and payload[i + 4] < 128 and payload[i + 4] > 0:
            yield payload[i:i + 4 + n]


def main():
    d = tempfile.mkdtemp(prefix="hare-seeds-")
    log = os.path.join(d, "hare.log")
    with open(log, "w") as out:
        p = subprocess.Popen([HARE, "--port", "0", "--management-port", "0", "--data-dir", os.path.join(d, "data"),
                              "--audit-log", "off"], stdout=out, stderr=subprocess.STDOUT)
    try:
        amqp = Recorder(wait_log(log, r"AMQP listening on 127\.0\.0\.1:(\d+)"))
        http = Recorder(wait_log(log, r"HTTP API listening on 127\.0\.0\.1:(\d+)"))
        amqp_session(amqp.port)
        amqplain_session(amqp.port)
        http_session(http.port)
        time.sleep(0.5)  # the proxies' last bytes
    finally:
        p.terminate()
        p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)
    seeds = {t: set() for t in ("frame", "method", "field_table", "content_header", "sasl", "http")}
    for stream in amqp.sessions:
        stream = bytes(stream)
        seeds["frame"].add(b"\x00" + stream[8:])
        seeds["frame"].add(b"\x07" + stream[8:])
        for kind, _, payload in split_frames(stream):
            if kind == 1:
                seeds["method"].add(payload)
                seeds["field_table"].update(t for t in tables_in(payload) if len(t) < 4096)
                if payload[:4] == struct.pack(">HH", 10, 11):
                    mech_at = 4 + struct.unpack(">I", payload[4:8])[0] + 4
                    mech = payload[mech_at + 1:mech_at + 1 + payload[mech_at]]
                    r_at = mech_at + 1 + payload[mech_at]
                    n = struct.unpack(">I", payload[r_at:r_at + 4])[0]
                    pick = {b"PLAIN": 0, b"AMQPLAIN": 1, b"EXTERNAL": 2}.get(mech, 3)
                    seeds["sasl"].add(bytes([pick]) + payload[r_at + 4:r_at + 4 + n])
            elif kind == 2:
                seeds["content_header"].add(payload[12:])
    for stream in http.sessions:
        stream = bytes(stream)
        for part in re.split(rb"(?=(?:GET|PUT|POST|DELETE) /)", stream):
            if part:
                seeds["http"].add(part)
    for target, items in seeds.items():
        folder = os.path.join(CORPUS, target)
        os.makedirs(folder, exist_ok=True)
        for item in items:
            name = "seed-" + hashlib.sha1(item).hexdigest()[:16]
            with open(os.path.join(folder, name), "wb") as f:
                f.write(item)
        print(f"{target}: {len(items)} seeds")


if __name__ == "__main__":
    sys.exit(main())
