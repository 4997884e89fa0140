"""AMQPS, HTTPS and the stream protocol over TLS with certificates made by openssl: server
verification, client certificates and EXTERNAL, TLS 1.2/1.3 only, a reload on SIGHUP that keeps
open connections, and connection.update-secret."""
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
import urllib.request

import pika
import pytest

from conftest import Hare, wait_for
from test_management_api import api


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_cert(d, name, cn, ca="ca", server=False):
    """A key and a certificate signed by the CA in `d`; a server one names 127.0.0.1 and localhost."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={cn}",
            "-out", f"{name}.csr", cwd=d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="hare-tls-")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=Hare test CA",
            "-days", "2", "-out", "ca.pem", cwd=d)
    make_cert(d, "server", "localhost", server=True)
    make_cert(d, "client", "certuser")
    make_cert(d, "stranger", "nobody-known")
    return d


def tls_port(h, what="AMQPS"):
    def find():
        m = re.search(rf"{what} listening on 127\.0\.0\.1:(\d+)", h.read_log())
        return int(m.group(1)) if m else None
    return wait_for(find, what=f"{what} to listen")


def start(certs, *extra):
    return Hare(extra_args=["--tls-cert", f"{certs}/server.pem", "--tls-key", f"{certs}/server.key",
                            "--tls-ca", f"{certs}/ca.pem", "--tls-port", "0", "--management-tls-port", "0", *extra])


@pytest.fixture(scope="module")
def hare(certs):
    h = start(certs)
    yield h
    h.stop()


def context(certs, client=None, maximum=None):
    ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
    if client:
        ctx.load_cert_chain(f"{certs}/{client}.pem", f"{certs}/{client}.key")
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def connect_tls(h, certs, client=None, credentials=None, maximum=None):
    params = pika.ConnectionParameters(
        host="127.0.0.1", port=tls_port(h),
        ssl_options=pika.SSLOptions(context(certs, client, maximum), server_hostname="localhost"),
        **({"credentials": credentials} if credentials else {}))
    return pika.BlockingConnection(params)


def test_amqps_carries_messages_with_the_server_verified(hare, certs):
    c = connect_tls(hare, certs)
    ch = c.channel()
    ch.queue_declare("tls-q")
    ch.basic_publish("", "tls-q", b"over tls")
    assert ch.basic_get("tls-q", auto_ack=True)[2] == b"over tls"
    c.close()
    # Only TLS 1.2 and 1.3: a client capped at 1.2 still connects.
    connect_tls(hare, certs, maximum=ssl.TLSVersion.TLSv1_2).close()
    # A client that trusts another CA refuses the server.
    bad = ssl.create_default_context()
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=tls_port(hare), ssl_options=pika.SSLOptions(bad, server_hostname="localhost"),
            connection_attempts=1))


def test_a_tls_1_1_client_is_refused(hare, certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python cannot offer TLS 1.1")
    import socket
    with socket.create_connection(("127.0.0.1", tls_port(hare)), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            with ctx.wrap_socket(raw) as s:
                s.do_handshake()


def test_external_logs_in_as_the_client_certificates_name(hare, certs):
    assert api(hare, "/api/users/certuser", method="PUT", body={"tags": ""})[0] == 201
    assert api(hare, "/api/permissions/%2F/certuser", method="PUT",
               body={"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    c = connect_tls(hare, certs, client="client", credentials=pika.credentials.ExternalCredentials())
    ch = c.channel()
    ch.queue_declare("ext-q")
    conns = api(hare, "/api/connections")[1]
    assert any(x["user"] == "certuser" for x in conns)
    c.close()
    # A certificate whose name is no user is refused as RabbitMQ refuses a login.
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        connect_tls(hare, certs, client="stranger", credentials=pika.credentials.ExternalCredentials())
    assert "EXTERNAL" in str(e.value)
    # A user without a password cannot log in by password.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connect_tls(hare, certs, credentials=pika.PlainCredentials("certuser", ""))


def test_connections_show_their_tls_session_and_certificate(hare, certs):
    """What operators audit TLS with, as RabbitMQ's connection objects show it."""
    plain = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", hare.port))
    c = connect_tls(hare, certs, client="client")
    by_ssl = {}
    for x in api(hare, "/api/connections")[1]:
        by_ssl[x["ssl"]] = x
    tls, tcp = by_ssl[True], by_ssl[False]
    assert tls["ssl_protocol"] in ("tlsv1.2", "tlsv1.3") and tls["auth_mechanism"] == "PLAIN"
    assert tls["ssl_cipher"] in ("aes_256_gcm", "aes_128_gcm", "chacha20_poly1305") and tls["ssl_hash"] == "aead"
    assert tls["ssl_key_exchange"] == ("any" if tls["ssl_protocol"] == "tlsv1.3" else tls["ssl_key_exchange"])
    assert tls["peer_cert_subject"] == "CN=certuser" and tls["peer_cert_issuer"] == "CN=Hare test CA"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ - \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tls["peer_cert_validity"])
    assert tcp["ssl_protocol"] is None and tcp["peer_cert_subject"] is None and tcp["auth_mechanism"] == "PLAIN"
    c.close()
    plain.close()


def test_a_client_without_a_certificate_is_turned_away_when_one_is_required(certs):
    h = start(certs, "--tls-fail-if-no-peer-cert")
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect_tls(h, certs)
        connect_tls(h, certs, client="client").close()
    finally:
        h.stop()


def test_the_api_over_https(hare, certs):
    port = tls_port(hare, "HTTPS API")
    req = urllib.request.Request(f"https://localhost:{port}/api/overview")
    import base64
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, context=context(certs), timeout=10) as r:
        body = json.loads(r.read())
    protocols = {l["protocol"] for l in body["listeners"]}
    assert {"amqp", "amqp/ssl", "http", "https"} <= protocols


def serial_seen(h, certs):
    import socket
    ctx = context(certs)
    with socket.create_connection(("127.0.0.1", tls_port(h)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert()["serialNumber"]


def test_sighup_reloads_the_certificate_and_keeps_open_connections(certs):
    d = tempfile.mkdtemp(prefix="hare-tls-reload-")
    for f in ("ca.pem", "ca.key", "server.pem", "server.key"):
        with open(f"{certs}/{f}", "rb") as src, open(f"{d}/{f}", "wb") as dst:
            dst.write(src.read())
    h = start(d)
    try:
        before = serial_seen(h, d)
        c = connect_tls(h, d)
        ch = c.channel()
        ch.queue_declare("reload-q")
        make_cert(d, "server", "localhost", server=True)
        h.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificates reloaded" in h.read_log(), what="the reload")
        assert serial_seen(h, d) != before
        # The connection opened before the reload still works.
        ch.basic_publish("", "reload-q", b"still here")
        assert ch.basic_get("reload-q", auto_ack=True)[2] == b"still here"
        c.close()
        # A broken key file is reported and the certificate in force stays.
        with open(f"{d}/server.key", "w") as f:
            f.write("not a key\n")
        h.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificates not reloaded" in h.read_log(), what="the refused reload")
        connect_tls(h, d).close()
    finally:
        h.stop()


def test_a_missing_certificate_refuses_to_start(certs):
    h = subprocess.run([os.environ.get("HARE_BIN", "target/release/hare"), "--port", "0", "--management-port", "0",
                        "--data-dir", tempfile.mkdtemp(), "--tls-cert", f"{certs}/missing.pem",
                        "--tls-key", f"{certs}/server.key"], capture_output=True, text=True, timeout=30)
    assert h.returncode != 0 and "missing.pem" in h.stdout + h.stderr


def test_update_secret_is_accepted_and_the_connection_goes_on(hare, certs):
    """As RabbitMQ 3.10 with its internal users: update-secret answers update-secret-ok whatever
    the secret (the method is for token backends), and the connection keeps its user."""
    c = connect_tls(hare, certs)
    c.update_secret("guest", "rotated")
    c.channel().queue_declare("after-update")
    c.update_secret("not-the-password", "rotated")
    ch = c.channel()
    assert ch.queue_declare("after-update", passive=True).method.queue == "after-update"
    ch.queue_delete("after-update")
    c.close()


def test_a_shovel_reads_over_amqps_with_the_server_verified(hare, certs):
    """A shovel whose source is an amqps:// URI: the server verified against the CA
    (verify_peer), then a source that presents a certificate of another CA: refused, with the
    reason in the shovel's state."""
    from helpers import api

    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("tls-shovel-src")
    for i in range(20):
        ch.basic_publish("", "tls-shovel-src", b"t%d" % i)
    port = tls_port(hare)
    uri = f"amqps://guest:guest@localhost:{port}?cacertfile={certs}/ca.pem&verify=verify_peer"
    value = {"src-uri": uri, "src-queue": "tls-shovel-src", "dest-uri": "amqp://", "dest-queue": "tls-shovel-dst"}
    assert api(hare.http_port, "PUT", "/api/parameters/shovel/%2F/over-tls", {"value": value})[0] == 201
    try:
        def moved():
            api_q = api(hare.http_port, "GET", "/api/queues/%2F/tls-shovel-dst")
            return api_q[0] == 200 and api_q[1]["messages"] == 20
        wait_for(moved, timeout=30, what="the messages moved over TLS")
        # A CA that did not sign the server's certificate: the shovel is refused.
        other = tempfile.mkdtemp(prefix="hare-tls-other-")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=Other CA",
                "-days", "2", "-out", "ca.pem", cwd=other)
        value["src-uri"] = f"amqps://guest:guest@localhost:{port}?cacertfile={other}/ca.pem&verify=verify_peer"
        assert api(hare.http_port, "PUT", "/api/parameters/shovel/%2F/over-tls", {"value": value})[0] == 204

        def refused():
            states = api(hare.http_port, "GET", "/api/shovels")[1]
            s = next((s for s in states if s["name"] == "over-tls"), {})
            return s.get("state") == "terminated" and s
        s = wait_for(refused, timeout=30, what="the shovel refused")
        assert "certificate" in s["reason"].lower() or "tls" in s["reason"].lower(), s["reason"]
    finally:
        api(hare.http_port, "DELETE", "/api/parameters/shovel/%2F/over-tls")
        c.close()


def test_mqtt_over_tls_and_secure_websocket_with_client_certificates(certs):
    """MQTT on its TLS port and on Web MQTT's secure WebSocket, with no plain MQTT port open:
    a client certificate logs in as the user it names (as RabbitMQ's ssl_cert_login), and
    the two clients reach each other."""
    import paho.mqtt.client as mqtt
    from helpers import free_ports

    mqtts, wss = free_ports(2)
    h = start(certs, "--mqtt-tls-port", str(mqtts), "--mqtt-wss-port", str(wss))
    try:
        wait_for(lambda: "Web MQTT over TLS listening" in h.read_log(), what="the MQTT listeners")
        assert "MQTT listening" not in h.read_log()
        assert api(h, "/api/users/certuser", method="PUT", body={"tags": ""})[0] == 201
        assert api(h, "/api/permissions/%2F/certuser", method="PUT",
                   body={"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
        got, clients = [], []
        for port, transport in ((mqtts, "tcp"), (wss, "websockets")):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tls-{transport}", transport=transport)
            if transport == "websockets":
                c.ws_set_options(path="/ws")
            c.tls_set_context(context(certs, client="client"))
            connected = []
            c.on_connect = lambda cl, u, f, rc, p, connected=connected: connected.append(rc)
            c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
            c.connect("localhost", port, keepalive=30)
            c.loop_start()
            clients.append(c)
            wait_for(lambda: connected, what=f"CONNACK over {transport}")
            assert not connected[0].is_failure, connected
        subscribed = []
        clients[1].on_subscribe = lambda *a: subscribed.append(1)
        clients[1].subscribe("secure/#", qos=1)
        wait_for(lambda: subscribed, what="SUBACK")
        clients[0].publish("secure/x", b"sealed", qos=1).wait_for_publish(10)
        wait_for(lambda: got, what="the message over wss")
        assert got == [("secure/x", b"sealed")]
        conns = api(h, "/api/connections")[1]
        assert sorted(x["protocol"] for x in conns if x["user"] == "certuser") == ["MQTT 3.1.1", "Web MQTT 3.1.1"]
        assert all(x["ssl"] for x in conns if x["user"] == "certuser")
        for c in clients:
            c.disconnect()
            c.loop_stop()
    finally:
        h.stop()


def test_the_stream_protocol_over_tls_with_plain_and_external(certs):
    """RabbitMQ's stream protocol on its TLS port: rstream publishes and consumes with the
    server verified, and logs in with EXTERNAL as its client certificate's name."""
    import asyncio

    from rstream import Consumer, ConsumerOffsetSpecification, OffsetType, Producer
    from rstream.constants import SlasMechanism

    from helpers import free_ports
    plain, tls = free_ports(2)
    h = start(certs, "--stream-port", str(plain), "--stream-tls-port", str(tls))
    try:
        wait_for(lambda: "stream protocol over TLS listening" in h.read_log(), what="the stream TLS listener")
        assert api(h, "/api/users/certuser", method="PUT", body={"tags": ""})[0] == 201
        assert api(h, "/api/permissions/%2F/certuser", method="PUT",
                   body={"configure": ".*", "write": ".*", "read": ".*"})[0] == 201

        async def go():
            async with Producer("127.0.0.1", port=tls, username="guest", password="guest",
                                ssl_context=context(certs)) as p:
                await p.create_stream("tls-stream")
                await p.send_wait("tls-stream", b"over tls")
            got, done = [], asyncio.Event()

            async def on(msg, ctx):
                got.append(msg)
                done.set()
            async with Consumer("127.0.0.1", port=tls, username="", password="", ssl_context=context(certs, "client"),
                                sasl_configuration_mechanism=SlasMechanism.MechanismExternal) as c:
                await c.start()
                await c.subscribe("tls-stream", on, offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST))
                await asyncio.wait_for(done.wait(), 10)
            return got
        assert asyncio.run(asyncio.wait_for(go(), 30)) == [b"over tls"]
    finally:
        h.stop()
