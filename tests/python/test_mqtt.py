"""MQTT 3.1.1 and 5.0 through paho-mqtt and Debian's mosquitto-clients, beside AMQP through
pika: publish and subscribe at every QoS, MQTT to AMQP and back through amq.topic, retained
messages and persistent sessions across a restart, wills, session take-over, refusals and
malformed packets on raw sockets; MQTT over WebSocket (Web MQTT) through paho-mqtt and raw
WebSocket frames."""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import Hare, wait_for
from helpers import api, free_ports

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


@pytest.fixture(scope="module")
def broker():
    port, ws_port = free_ports(2)
    h = Hare(extra_args=["--mqtt-port", str(port), "--mqtt-ws-port", str(ws_port)])
    h.mqtt_port, h.ws_port = port, ws_port
    wait_for(lambda: "Web MQTT listening" in h.read_log(), what="the MQTT listeners")
    yield h
    h.stop()


class Client:
    """A paho client whose messages, subscriptions and disconnects are recorded."""

    def __init__(self, broker, client_id, proto=V311, user="guest", password="guest", clean=True, will=None,
                 ws=False, **kw):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                             transport="websockets" if ws else "tcp",
                             **({"clean_session": clean} if proto != V5 else {}))
        if ws:
            self.c.ws_set_options(path="/ws")
        if user is not None:
            self.c.username_pw_set(user, password)
        if will:
            self.c.will_set(*will)
        self.messages, self.connack, self.subacks, self.disconnected = [], [], [], []
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.append((flags, rc))
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subacks.append(codes)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnected.append(rc)
        connect_kw = {}
        if proto == V5:
            connect_kw["clean_start"] = clean
            if kw.get("session_expiry") is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = kw["session_expiry"]
                connect_kw["properties"] = p
        self.c.connect("127.0.0.1", broker.ws_port if ws else broker.mqtt_port, keepalive=kw.get("keepalive", 30), **connect_kw)
        self.c.loop_start()
        wait_for(lambda: self.connack or self.disconnected, what="CONNACK")

    def subscribe(self, topic, qos=1):
        n = len(self.subacks)
        self.c.subscribe(topic, qos=qos)
        wait_for(lambda: len(self.subacks) > n, what="SUBACK")
        return self.subacks[-1]

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(10)
        assert info.is_published()
        return info

    def wait(self, n, timeout=10):
        wait_for(lambda: len(self.messages) >= n, timeout=timeout, what=f"{n} messages")
        return self.messages

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("proto", [V311, V5], ids=["3.1.1", "5.0"])
def test_publish_and_subscribe_at_every_qos(broker, proto):
    sub = Client(broker, f"sub-{proto}", proto)
    pub = Client(broker, f"pub-{proto}", proto)
    try:
        codes = sub.subscribe("qos/+/x", qos=2)
        # QoS 2 subscriptions are granted at QoS 1, as RabbitMQ grants them.
        assert [int(getattr(c, "value", c)) for c in codes] == [1]
        for q in (0, 1, 2):
            pub.publish(f"qos/{q}/x", f"m{q}".encode(), qos=q)
        msgs = sub.wait(3)
        assert sorted((m.topic, m.payload, m.qos) for m in msgs) == [
            ("qos/0/x", b"m0", 0), ("qos/1/x", b"m1", 1), ("qos/2/x", b"m2", 1)]
        pub.publish("other/topic", b"nobody", qos=1)
        pub.publish("qos/9/x", b"last", qos=1)
        assert sub.wait(4)[-1].payload == b"last"
    finally:
        sub.close()
        pub.close()


def test_qos2_resent_is_routed_once(broker):
    """A QoS 2 publish sent twice with one packet identifier (DUP) before its PUBREL reaches
    subscribers once; PUBREL is answered with PUBCOMP."""
    sub = Client(broker, "qos2-sub")
    sub.subscribe("once/#")
    s = raw_connect(broker, "qos2-raw")
    try:
        publish = lambda dup: bytes([0x34 | (8 if dup else 0)]) + rl(2 + 6 + 2 + 3) + s16(b"once/x") + struct.pack(">H", 7) + b"abc"
        s.sendall(publish(False))
        assert read_packet(s)[0] == 0x50  # PUBREC
        s.sendall(publish(True))
        assert read_packet(s)[0] == 0x50
        s.sendall(bytes([0x62, 2]) + struct.pack(">H", 7))
        assert read_packet(s) == (0x70, struct.pack(">H", 7))  # PUBCOMP
        sub.wait(1)
        # Nothing more arrives: a PUBLISH sent after it overtakes no duplicate.
        sub_pub = Client(broker, "qos2-after")
        sub_pub.publish("once/y", b"after")
        msgs = sub.wait(2)
        assert [m.payload for m in msgs] == [b"abc", b"after"]
        sub_pub.close()
    finally:
        s.close()
        sub.close()


def test_mqtt_and_amqp_meet_on_amq_topic(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "sensors.*.temperature")
    dev = Client(broker, "device", V5)
    app = Client(broker, "dashboard", V5)
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "text/plain"
        props.CorrelationData = b"req-1"
        props.ResponseTopic = "replies/device"
        props.UserProperty = [("unit", "celsius")]
        dev.publish("sensors/42/temperature", b"21.5", properties=props)
        method, p, body = wait_for(lambda: (lambda got: got if got[0] else None)(ch.basic_get(q, auto_ack=True)),
                                   what="the AMQP copy")
        assert (method.routing_key, body) == ("sensors.42.temperature", b"21.5")
        assert p.delivery_mode == 2 and p.content_type == "text/plain"
        assert p.correlation_id == "req-1" and p.reply_to == "replies.device"
        assert p.headers["unit"] == "celsius" and p.headers["x-mqtt-publish-qos"] == 1
        # AMQP to MQTT: a reply to the response topic reaches the device.
        dev.subscribe("replies/device")
        ch.basic_publish("amq.topic", p.reply_to, b"ack",
                         pika.BasicProperties(content_type="application/json", correlation_id="req-1",
                                              headers={"origin": "amqp"}))
        m = dev.wait(1)[0]
        assert (m.topic, m.payload, m.qos) == ("replies/device", b"ack", 1)
        assert m.properties.ContentType == "application/json"
        assert m.properties.CorrelationData == b"req-1"
        assert ("origin", "amqp") in m.properties.UserProperty
    finally:
        dev.close()
        app.close()
        conn.close()


def test_connections_and_subscription_queues_in_the_management_api(broker):
    c = Client(broker, "visible", V311, clean=False)
    try:
        c.subscribe("seen/#")
        conns = wait_for(lambda: [x for x in api(broker.http_port, "GET", "/api/connections")[1]
                                  if x["protocol"] == "MQTT 3.1.1"], what="the MQTT connection")
        assert conns[0]["client_properties"]["client_id"] == "visible"
        q = api(broker.http_port, "GET", "/api/queues/%2F/mqtt-subscription-visibleqos1")[1]
        assert q["durable"] is True and q["consumers"] == 1
        binds = api(broker.http_port, "GET", "/api/queues/%2F/mqtt-subscription-visibleqos1/bindings")[1]
        assert any(b["source"] == "amq.topic" and b["routing_key"] == "seen.#" for b in binds)
    finally:
        c.close()
        api(broker.http_port, "DELETE", "/api/queues/%2F/mqtt-subscription-visibleqos1")


def test_retained_messages_survive_a_restart_and_are_cleared_by_an_empty_one():
    (port,) = free_ports(1)
    h = Hare(extra_args=["--mqtt-port", str(port)])
    h.mqtt_port = port
    try:
        wait_for(lambda: "MQTT listening" in h.read_log())
        p = Client(h, "retainer")
        p.publish("home/kitchen/temp", b"20", retain=True)
        p.publish("home/hall/temp", b"18", retain=True)
        p.publish("home/hall/temp", b"19", retain=True)
        p.close()
        h.restart()
        wait_for(lambda: "MQTT listening" in h.read_log())
        s = Client(h, "late", V5)
        s.subscribe("home/+/temp")
        msgs = s.wait(2)
        assert sorted((m.topic, m.payload, m.retain) for m in msgs) == [
            ("home/hall/temp", b"19", True), ("home/kitchen/temp", b"20", True)]
        s.publish("home/hall/temp", b"", retain=True)
        s.close()
        s2 = Client(h, "later")
        s2.subscribe("home/#")
        # The retained messages follow the SUBACK at once, in one write: one is all there is.
        msgs = s2.wait(1)
        assert [(m.topic, m.payload) for m in msgs] == [("home/kitchen/temp", b"20")]
        s2.close()
    finally:
        h.stop()


@pytest.mark.parametrize("proto", [V311, V5], ids=["3.1.1", "5.0"])
def test_a_persistent_session_gets_what_arrived_while_away_across_a_restart(proto):
    (port,) = free_ports(1)
    h = Hare(extra_args=["--mqtt-port", str(port)])
    h.mqtt_port = port
    try:
        wait_for(lambda: "MQTT listening" in h.read_log())
        kw = {"session_expiry": 3600} if proto == V5 else {}
        s = Client(h, "sleeper", proto, clean=False, **kw)
        assert s.subscribe("jobs/#")
        s.close()
        p = Client(h, "producer")
        for i in range(20):
            p.publish(f"jobs/{i}", str(i).encode(), qos=1)
        p.close()
        h.restart(graceful=False)
        wait_for(lambda: "MQTT listening" in h.read_log())
        s = Client(h, "sleeper", proto, clean=False, **kw)
        assert s.connack[0][0].session_present
        msgs = s.wait(20)
        assert sorted(int(m.payload) for m in msgs) == list(range(20))
        # The subscription is part of the session: new messages keep coming.
        p = Client(h, "producer")
        p.publish("jobs/next", b"20")
        assert s.wait(21)[-1].payload == b"20"
        p.close()
        s.close()
        # A clean start ends the session and its queue.
        s = Client(h, "sleeper", proto, clean=True)
        assert not s.connack[0][0].session_present
        s.close()
        wait_for(lambda: api(h.http_port, "GET", "/api/queues/%2F/mqtt-subscription-sleeperqos1")[0] == 404,
                 what="the session queue gone")
    finally:
        h.stop()


def test_will_is_sent_on_an_unclean_end_only(broker):
    watcher = Client(broker, "watcher")
    watcher.subscribe("status/#")
    try:
        # Closed cleanly: no will.
        c = Client(broker, "polite", will=("status/polite", b"gone", 1))
        c.close()
        # A socket that just ends: the will goes out.
        s = raw_connect(broker, "rude", will=("status/rude", b"offline"))
        s.close()
        m = watcher.wait(1)[0]
        assert (m.topic, m.payload) == ("status/rude", b"offline")
        # And nothing from the polite one (the rude one's will came after its DISCONNECT).
        assert [m.topic for m in watcher.messages] == ["status/rude"]
    finally:
        watcher.close()


def test_a_second_connection_with_the_same_client_id_takes_over(broker):
    first = Client(broker, "twin", V5)
    # paho reconnects by itself: not within this test, or the two would take turns.
    first.c.reconnect_delay_set(min_delay=120, max_delay=120)
    second = Client(broker, "twin", V5)
    try:
        wait_for(lambda: first.disconnected, what="the first connection to be disconnected")
        assert int(first.disconnected[0].value) == 0x8E  # session taken over
        second.subscribe("twin/#")
        p = Client(broker, "twin-pub")
        p.publish("twin/a", b"x")
        assert second.wait(1)[0].payload == b"x"
        p.close()
    finally:
        first.c.loop_stop()
        second.close()


def test_refusals_carry_reason_codes(broker):
    bad = Client(broker, "bad-pass", V311, password="nope")
    # 3.1.1's return code 4, which paho reports as 0x86.
    assert int(bad.connack[0][1].value) == 0x86
    bad.c.loop_stop()
    bad5 = Client(broker, "bad-pass5", V5, password="nope")
    assert int(bad5.connack[0][1].value) == 0x86
    bad5.c.loop_stop()
    # vhost:user picks the vhost; a vhost that does not exist is refused.
    novh = Client(broker, "novhost", V5, user="nowhere:guest")
    assert int(novh.connack[0][1].value) == 0x86
    novh.c.loop_stop()
    api(broker.http_port, "PUT", "/api/vhosts/devices", {})
    api(broker.http_port, "PUT", "/api/users/dev", {"password": "dev", "tags": ""})
    api(broker.http_port, "PUT", "/api/permissions/devices/dev", {"configure": "^mqtt-", "write": "^mqtt-", "read": ".*"})
    dev = Client(broker, "dev1", V5, user="devices:dev", password="dev")
    try:
        assert int(dev.connack[0][1].value) == 0
        conn = [x for x in api(broker.http_port, "GET", "/api/connections")[1] if x["client_properties"].get("client_id") == "dev1"]
        assert conn and conn[0]["vhost"] == "devices"
        # No write permission on amq.topic: MQTT 5 hears it in the PUBACK.
        acks = []
        dev.c.on_publish = lambda c, u, mid, rc, props: acks.append(int(rc.value))
        dev.c.publish("x/y", b"z", qos=1)
        wait_for(lambda: acks, what="PUBACK")
        assert acks == [0x87]
        # Subscribing needs configure, write and read on its queue and read on amq.topic: allowed.
        assert int(dev.subscribe("x/#")[0].value) == 1
    finally:
        dev.close()
    # 3.1.1 has no way to say no: the connection is closed.
    dev3 = Client(broker, "dev3", V311, user="devices:dev", password="dev")
    dev3.c.publish("x/y", b"z", qos=1)
    wait_for(lambda: dev3.disconnected, what="the refused publisher to be disconnected")
    dev3.c.loop_stop()


def test_malformed_packets_close_only_their_connection(broker):
    bystander = Client(broker, "bystander")
    bystander.subscribe("still/#")
    cases = [
        b"\x10\x00",                                # CONNECT with nothing in it
        b"\x30\x02\x00\x01",                        # PUBLISH before CONNECT
        b"\x10" + b"\xff\xff\xff\xff\x7f",          # a remaining length of five bytes
        b"\x10\xff\xff\xff\x7f" + b"\x00" * 100,    # 256 MiB announced before the login
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",        # not MQTT at all
    ]
    for data in cases:
        s = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=10)
        s.sendall(data)
        assert recv_until_closed(s) in (b"",), data
        s.close()
    # After CONNECT: a second CONNECT, an invalid topic, a reserved flag.
    for data in [connect_packet("again"), bytes([0x30]) + rl(2 + 3) + s16(b"a/+"),
                 bytes([0x80, 6]) + struct.pack(">H", 1) + s16(b"a") + b"\x00"]:
        s = raw_connect(broker, "twice")
        s.sendall(data)
        recv_until_closed(s)
        s.close()
    # An unsupported protocol level gets CONNACK 1 (3.1.1's "unacceptable protocol version").
    s = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=10)
    body = s16(b"MQTT") + bytes([9, 2]) + struct.pack(">H", 30) + s16(b"lvl")
    s.sendall(bytes([0x10]) + rl(len(body)) + body)
    assert read_packet(s) == (0x20, b"\x00\x01")
    s.close()
    p = Client(broker, "still-here")
    p.publish("still/ok", b"yes")
    assert bystander.wait(1)[0].payload == b"yes"
    p.close()
    bystander.close()


@pytest.mark.skipif(not shutil.which("mosquitto_pub"), reason="Debian's mosquitto-clients (test.sh installs it)")
def test_mosquitto_clients(broker):
    port = str(broker.mqtt_port)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-u", "guest", "-P", "guest",
                            "-t", "mosq/#", "-C", "2", "-v", "-q", "1", "-V", "mqttv5"],
                           stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: queue_of(broker, "mosq"), what="mosquitto_sub's subscription")
        for i, v in enumerate(["mqttv311", "mqttv5"]):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-u", "guest", "-P", "guest",
                            "-t", f"mosq/{i}", "-m", f"hello {v}", "-q", "1", "-V", v], check=True, timeout=30)
        out, _ = sub.communicate(timeout=30)
        assert out.splitlines() == ["mosq/0 hello mqttv311", "mosq/1 hello mqttv5"]
    finally:
        sub.kill()


@pytest.mark.parametrize("proto", [V311, V5], ids=["3.1.1", "5.0"])
def test_web_mqtt_meets_mqtt_and_amqp(broker, proto):
    """A browser's client over WebSocket at /ws exchanges messages with a TCP client and with
    AMQP, and is listed as a Web MQTT connection."""
    web = Client(broker, f"web-{proto}", proto, ws=True)
    tcp = Client(broker, f"tcp-{proto}", proto)
    conn = broker.connect()
    try:
        web.subscribe("web/in/#")
        tcp.subscribe("web/out")
        tcp.publish("web/in/tcp", b"from tcp")
        conn.channel().basic_publish("amq.topic", "web.in.amqp", b"from amqp")
        msgs = web.wait(2)
        assert sorted((m.topic, m.payload) for m in msgs) == [("web/in/amqp", b"from amqp"), ("web/in/tcp", b"from tcp")]
        web.publish("web/out", b"x" * 200_000)
        assert tcp.wait(1)[0].payload == b"x" * 200_000
        version = "3.1.1" if proto == V311 else "5.0"
        conns = wait_for(lambda: [x for x in api(broker.http_port, "GET", "/api/connections")[1]
                                  if x["client_properties"].get("client_id") == f"web-{proto}"], what="the connection")
        assert conns[0]["protocol"] == f"Web MQTT {version}"
    finally:
        web.close()
        tcp.close()
        conn.close()


def test_overview_lists_the_mqtt_listeners(broker):
    listeners = api(broker.http_port, "GET", "/api/overview")[1]["listeners"]
    ports = {l["protocol"]: l["port"] for l in listeners}
    assert ports["mqtt"] == broker.mqtt_port and ports["http/web-mqtt"] == broker.ws_port
    assert ports["amqp"] == broker.port


def ws_upgrade(broker, path="/ws", protocols="mqtt"):
    """Opens a WebSocket by hand; returns the socket and the HTTP answer's head."""
    s = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head.decode()


def ws_frame(payload, opcode=0x2):
    """A client's WebSocket frame: final, masked, as the protocol requires of clients."""
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(s):
    """The payload of the next (unmasked, unfragmented) frame from the server."""
    head = s.recv(2)
    assert len(head) == 2, "connection closed"
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", s.recv(2))[0]
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk
        data += chunk
    return head[0] & 0x0F, data


def test_web_mqtt_carries_packets_across_and_within_messages(broker):
    """Only /ws upgrades; `mqtt` is the subprotocol chosen; a packet split over two messages
    and two packets in one message are read as one stream, and text messages are ignored
    (as RabbitMQ ignores them)."""
    s, head = ws_upgrade(broker, path="/other")
    assert head.startswith("HTTP/1.1 404"), head
    s.close()
    s, head = ws_upgrade(broker, protocols="mqttv3.1, mqtt")
    try:
        assert head.startswith("HTTP/1.1 101"), head
        assert "sec-websocket-protocol: mqtt\r\n" in head.lower()
        connect = connect_packet("ws-raw")
        s.sendall(ws_frame(connect[:7]))
        s.sendall(ws_frame(b"ignored", opcode=0x1))
        s.sendall(ws_frame(connect[7:] + bytes([0xC0, 0])))  # the rest of CONNECT, and a PINGREQ
        received = b""
        for _ in range(6):  # one message or several: a stream of bytes
            if len(received) >= 6:
                break
            opcode, data = ws_read(s)
            assert opcode == 0x2
            received += data
        assert received == b"\x20\x02\x00\x00" + b"\xd0\x00"  # CONNACK, PINGRESP
        s.sendall(ws_frame(bytes([0xE0, 0])))  # DISCONNECT
    finally:
        s.close()


def queue_of(broker, prefix):
    return [q for q in api(broker.http_port, "GET", "/api/queues")[1]
            if q["name"].startswith("mqtt-subscription-") and q["consumers"] and
            any(b["routing_key"].startswith(prefix) for b in api(broker.http_port, "GET", f"/api/queues/%2F/{q['name']}/bindings")[1])]


# ---- raw MQTT 3.1.1 packets, for what a client library will not send ----

def rl(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def s16(b):
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id, will=None):
    flags = 0xC2
    payload = s16(client_id.encode())
    if will:
        flags |= 0x04 | (1 << 3)
        payload += s16(will[0].encode()) + s16(will[1])
    payload += s16(b"guest") + s16(b"guest")
    body = s16(b"MQTT") + bytes([4, flags]) + struct.pack(">H", 30) + payload
    return bytes([0x10]) + rl(len(body)) + body


def read_packet(s):
    first = s.recv(1)
    assert first, "connection closed"
    n, shift = 0, 0
    while True:
        b = s.recv(1)[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk
        body += chunk
    return first[0], body


def raw_connect(broker, client_id, will=None):
    s = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=10)
    s.sendall(connect_packet(client_id, will))
    assert read_packet(s) == (0x20, b"\x00\x00")
    return s


def recv_until_closed(s):
    """Reads until the broker closes the socket (bounded by the socket's timeout)."""
    data = b""
    for _ in range(1000):
        chunk = s.recv(65536)
        if not chunk:
            return b""
        data += chunk
    raise AssertionError("the broker did not close the connection")
