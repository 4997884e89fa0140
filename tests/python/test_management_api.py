"""The management HTTP API, as RabbitMQ's plugin answers: paths, JSON field names, basic auth
with the broker's users, URL-encoded vhost names, 401 and 404 bodies."""
import base64
import json
import urllib.error
import urllib.request

import pika


def api(hare, path, user="guest", password="guest", method="GET", body=None):
    """(status, JSON body or None) of a request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{hare.http_port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def test_requests_without_a_valid_user_get_rabbitmqs_401(hare):
    # As RabbitMQ 3.10: no credentials is a bare 401 with the challenge; wrong ones say so.
    assert api(hare, "/api/overview", None, None) == (401, None)
    for user, password in [("guest", "wrong"), ("nobody", "guest")]:
        status, body = api(hare, "/api/overview", user, password)
        assert status == 401
        assert body == {"error": "not_authorized", "reason": "Login failed"}
    status, body = api(hare, "/api/whoami")
    assert status == 200 and body["name"] == "guest"


def test_queues_exchanges_and_bindings_as_rabbitmq_lists_them(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("api-q", durable=True, arguments={"x-max-length": 10, "x-queue-mode": "lazy"})
    ch.exchange_declare("api-x", "topic", durable=True)
    ch.queue_bind("api-q", "api-x", routing_key="a.#")
    for i in range(3):
        ch.basic_publish("", "api-q", b"m%d" % i)
    method, _, _ = ch.basic_get("api-q")  # one unacknowledged
    ch.basic_consume("api-q", lambda *a: None)
    try:
        status, q = api(hare, "/api/queues/%2F/api-q")
        assert status == 200
        assert {k: q[k] for k in ("name", "vhost", "durable", "auto_delete", "exclusive", "type", "state")} == {
            "name": "api-q",
            "vhost": "/",
            "durable": True,
            "auto_delete": False,
            "exclusive": False,
            "type": "classic",
            "state": "running",
        }
        assert q["arguments"] == {"x-max-length": 10, "x-queue-mode": "lazy"}
        # The consumer takes the two ready ones (no prefetch limit): none ready, three unacked.
        assert q["consumers"] == 1
        assert q["messages"] == 3
        assert q["messages_ready"] + q["messages_unacknowledged"] == 3
        assert any(x["name"] == "api-q" for x in api(hare, "/api/queues")[1])
        assert [x["name"] for x in api(hare, "/api/queues/%2F")[1]].count("api-q") == 1

        status, x = api(hare, "/api/exchanges/%2F/api-x")
        assert status == 200
        assert x == {
            "name": "api-x",
            "vhost": "/",
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
            # As RabbitMQ: who declared it, and the per-channel and per-queue breakdowns of
            # the `detailed` statistics mode (empty in the `basic` mode).
            "user_who_performed_action": "guest",
            "incoming": [],
            "outgoing": [],
        }
        # The default exchange is amq.default in paths and "" in bodies.
        status, d = api(hare, "/api/exchanges/%2F/amq.default")
        assert status == 200 and d["name"] == "" and d["type"] == "direct"
        names = [e["name"] for e in api(hare, "/api/exchanges/%2F")[1]]
        assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match", "api-x"} <= set(names)

        bindings = api(hare, "/api/bindings/%2F")[1]
        assert {
            "source": "api-x",
            "vhost": "/",
            "destination": "api-q",
            "destination_type": "queue",
            "routing_key": "a.#",
            "arguments": {},
            # RabbitMQ's quote_plus of the key.
            "properties_key": "a.%23",
        } in bindings
        # The default exchange's implicit binding is listed, as RabbitMQ lists it.
        assert any(b["source"] == "" and b["destination"] == "api-q" and b["routing_key"] == "api-q" for b in bindings)
    finally:
        c.close()
        cleanup = hare.connect()
        cleanup.channel().queue_delete("api-q")
        cleanup.channel().exchange_delete("api-x")
        cleanup.close()


def test_overview_and_vhosts_count_what_is_there(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("api-count")
    for _ in range(5):
        ch.basic_publish("", "api-count", b"x")
    ch.queue_declare("api-count", passive=True)  # the publishes are in once this answers
    try:
        status, o = api(hare, "/api/overview")
        assert status == 200
        assert o["product_name"] == "Hare"
        assert o["object_totals"]["connections"] >= 1
        assert o["object_totals"]["queues"] >= 1
        assert o["object_totals"]["exchanges"] >= 6  # the default and the five amq.* ones
        assert o["queue_totals"]["messages_ready"] >= 5
        protocols = {(l["protocol"], l["port"]) for l in o["listeners"]}
        assert ("amqp", hare.port) in protocols and ("http", hare.http_port) in protocols
        status, vhosts = api(hare, "/api/vhosts")
        assert status == 200 and [v["name"] for v in vhosts] == ["/"]
        assert vhosts[0]["messages_ready"] >= 5
        status, v = api(hare, "/api/vhosts/%2F")
        assert status == 200 and v["name"] == "/"
    finally:
        ch.queue_delete("api-count")
        c.close()


def test_missing_objects_and_paths_get_rabbitmqs_404(hare):
    for path in ["/api/queues/%2F/no-such-queue", "/api/exchanges/%2F/no-such", "/api/vhosts/nope", "/api/queues/nope", "/api/nothing"]:
        status, body = api(hare, path)
        assert status == 404, path
        assert body == {"error": "Object Not Found", "reason": "Not Found"}, path


def test_declare_bind_publish_get_purge_and_delete_through_the_api(hare):
    q, x = "api-w-q", "api-w-x"
    assert api(hare, f"/api/queues/%2F/{q}", method="PUT", body={"durable": True, "arguments": {"x-max-length": 100}})[0] == 201
    # Again, the same: 204; with another argument value: 400 with RabbitMQ's text.
    assert api(hare, f"/api/queues/%2F/{q}", method="PUT", body={"durable": True, "arguments": {"x-max-length": 100}})[0] == 204
    status, body = api(hare, f"/api/queues/%2F/{q}", method="PUT", body={"durable": True, "arguments": {"x-max-length": 5}})
    assert status == 400 and body["error"] == "bad_request"
    assert "inequivalent arg 'x-max-length' for queue 'api-w-q' in vhost '/'" in body["reason"]
    assert api(hare, f"/api/exchanges/%2F/{x}", method="PUT", body={"type": "direct", "durable": True})[0] == 201
    assert api(hare, f"/api/exchanges/%2F/{x}", method="PUT", body={"durable": True})[0] == 400
    status, _ = api(hare, f"/api/bindings/%2F/e/{x}/q/{q}", method="POST", body={"routing_key": "k", "arguments": {}})
    assert status == 201
    assert any(b["source"] == x and b["destination"] == q for b in api(hare, f"/api/bindings/%2F")[1])

    # Published through the API, seen by an AMQP client; published over AMQP, got through the API.
    status, body = api(hare, f"/api/exchanges/%2F/{x}/publish", method="POST",
                       body={"routing_key": "k", "payload": "hello", "payload_encoding": "string",
                             "properties": {"delivery_mode": 2, "headers": {"h": "v"}}})
    assert (status, body) == (200, {"routed": True})
    status, body = api(hare, f"/api/exchanges/%2F/{x}/publish", method="POST",
                       body={"routing_key": "nowhere", "payload": "", "payload_encoding": "string", "properties": {}})
    assert body == {"routed": False}
    c = hare.connect()
    ch = c.channel()
    method, props, payload = ch.basic_get(q, auto_ack=True)
    assert payload == b"hello" and props.delivery_mode == 2 and props.headers == {"h": "v"}
    ch.basic_publish("", q, b"\x00binary", pika.BasicProperties(content_type="application/octet-stream"))
    ch.basic_publish("", q, b"text", pika.BasicProperties())
    ch.queue_declare(q, passive=True)
    status, got = api(hare, f"/api/queues/%2F/{q}/get", method="POST",
                      body={"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 200 and len(got) == 2
    assert got[0]["payload_encoding"] == "string" and got[0]["payload"] == "\x00binary"
    assert got[0]["properties"] == {"content_type": "application/octet-stream"}
    assert got[0]["message_count"] == 1 and got[1]["payload"] == "text" and got[1]["exchange"] == ""
    # Requeued: still there, now redelivered.
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    status, got = api(hare, f"/api/queues/%2F/{q}/get", method="POST",
                      body={"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"})
    assert got[0]["redelivered"] is True and got[0]["payload_encoding"] == "base64"
    assert base64.b64decode(got[0]["payload"]) == b"\x00binary"
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert api(hare, f"/api/queues/%2F/{q}/get", method="POST", body={"count": 1})[0] == 400

    # Purge, unbind, delete with the conditions.
    assert api(hare, f"/api/queues/%2F/{q}/contents", method="DELETE")[0] == 204
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert api(hare, f"/api/bindings/%2F/e/{x}/q/{q}/k", method="DELETE")[0] == 204
    assert not any(b["source"] == x for b in api(hare, f"/api/bindings/%2F")[1])
    ch.basic_publish("", q, b"one")
    ch.queue_declare(q, passive=True)
    status, body = api(hare, f"/api/queues/%2F/{q}?if-empty=true", method="DELETE")
    assert status == 400 and "not empty" in body["reason"]
    assert api(hare, f"/api/queues/%2F/{q}", method="DELETE")[0] == 204
    assert api(hare, f"/api/queues/%2F/{q}", method="DELETE")[0] == 404
    assert api(hare, f"/api/exchanges/%2F/{x}", method="DELETE")[0] == 204
    assert api(hare, f"/api/exchanges/%2F/{x}")[0] == 404
    c.close()


def test_durable_changes_through_the_api_survive_a_kill(fresh_hare):
    """A 201 for a durable queue is sent once it is on disk, as a declare-ok is."""
    assert api(fresh_hare, "/api/queues/%2F/api-durable", method="PUT", body={"durable": True})[0] == 201
    assert api(fresh_hare, "/api/exchanges/%2F/api-dx", method="PUT", body={"type": "fanout", "durable": True})[0] == 201
    assert api(fresh_hare, "/api/bindings/%2F/e/api-dx/q/api-durable", method="POST", body={})[0] == 201
    fresh_hare.restart(graceful=False)
    assert api(fresh_hare, "/api/queues/%2F/api-durable")[0] == 200
    assert api(fresh_hare, "/api/exchanges/%2F/api-dx")[0] == 200
    assert any(b["source"] == "api-dx" and b["properties_key"] == "~" for b in api(fresh_hare, "/api/bindings/%2F")[1])


# As RabbitMQ 3.10 exports them (rabbitmqadmin export), users and permissions included; the
# guest hash is salt 908dc60a with SHA-256 of salt ++ "guest", RabbitMQ's scheme.
RABBITMQ_EXPORT = {
    "rabbit_version": "3.10.8",
    "rabbitmq_version": "3.10.8",
    "product_name": "RabbitMQ",
    "product_version": "3.10.8",
    "users": [{"name": "guest", "password_hash": "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe",
               "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}}],
    "vhosts": [{"name": "/"}],
    "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"}],
    "policies": [],
    "queues": [
        {"name": "orders", "vhost": "/", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "classic", "x-max-length": 1000}},
        {"name": "audit", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}},
    ],
    "exchanges": [
        {"name": "shop", "vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}},
    ],
    "bindings": [
        {"source": "shop", "vhost": "/", "destination": "orders", "destination_type": "queue",
         "routing_key": "order.*", "arguments": {}},
        {"source": "shop", "vhost": "/", "destination": "audit", "destination_type": "queue",
         "routing_key": "#", "arguments": {}},
    ],
}


def test_definitions_from_rabbitmq_import_and_export_again(fresh_hare):
    status, _ = api(fresh_hare, "/api/definitions", method="POST", body=RABBITMQ_EXPORT)
    assert status == 204
    # The topology works: a message to shop with order.new reaches both queues.
    c = fresh_hare.connect()
    ch = c.channel()
    ch.basic_publish("shop", "order.new", b"o")
    assert ch.queue_declare("orders", passive=True).method.message_count == 1
    assert ch.queue_declare("audit", passive=True).method.message_count == 1
    c.close()
    # Imported durable definitions are on disk before the 204.
    fresh_hare.restart(graceful=False)
    status, out = api(fresh_hare, "/api/definitions")
    assert status == 200
    for key in ("queues", "exchanges", "bindings"):
        strip = lambda xs: sorted(xs, key=lambda x: json.dumps(x, sort_keys=True))
        assert strip(out[key]) == strip(RABBITMQ_EXPORT[key]), key
    assert [v["name"] for v in out["vhosts"]] == ["/"]
    assert [(u["name"], u["password_hash"], u["tags"]) for u in out["users"]] == [
        ("guest", RABBITMQ_EXPORT["users"][0]["password_hash"], ["administrator"])
    ]
    assert out["permissions"] == RABBITMQ_EXPORT["permissions"]
    # Importing the same again changes nothing; an inequivalent queue is refused with 400.
    assert api(fresh_hare, "/api/definitions", method="POST", body=out)[0] == 204
    changed = json.loads(json.dumps(RABBITMQ_EXPORT))
    changed["queues"][0]["arguments"]["x-max-length"] = 5
    status, body = api(fresh_hare, "/api/definitions", method="POST", body=changed)
    assert status == 400 and "inequivalent arg 'x-max-length'" in body["reason"]


def test_health_checks_and_the_aliveness_test(hare):
    assert api(hare, "/api/health/checks/alarms") == (200, {"status": "ok"})
    assert api(hare, "/api/health/checks/local-alarms") == (200, {"status": "ok"})
    assert api(hare, "/api/health/checks/virtual-hosts") == (200, {"status": "ok"})
    assert api(hare, "/api/aliveness-test/%2F") == (200, {"status": "ok"})
    assert api(hare, "/api/aliveness-test/nope")[0] == 404


def test_a_memory_alarm_fails_the_alarm_checks():
    from conftest import Hare, wait_for

    h = Hare(extra_args=["--memory-limit", "1MiB"])
    try:
        wait_for(lambda: api(h, "/api/health/checks/alarms")[0] == 503, what="the alarm check to fail")
        status, body = api(h, "/api/health/checks/local-alarms")
        assert status == 503
        assert body["status"] == "failed" and body["reason"] == "There are alarms in effect on the node"
        assert [a["resource"] for a in body["alarms"]] == ["memory"]
        assert api(h, "/api/health/checks/alarms")[1]["reason"] == "There are alarms in effect in the cluster"
    finally:
        h.stop()


def test_connections_are_listed_and_can_be_closed(fresh_hare):
    import urllib.parse

    from conftest import wait_for

    c = fresh_hare.connect(client_properties={"connection_name": "api-test-client"})
    ch1, ch2 = c.channel(), c.channel()
    status, conns = api(fresh_hare, "/api/connections")
    assert status == 200 and len(conns) == 1
    info = conns[0]
    assert info["user"] == "guest" and info["vhost"] == "/" and info["channels"] == 2
    assert info["protocol"] == "AMQP 0-9-1" and info["port"] == fresh_hare.port
    assert info["peer_host"] == "127.0.0.1"
    assert info["name"] == f"127.0.0.1:{info['peer_port']} -> 127.0.0.1:{fresh_hare.port}"
    assert info["client_properties"]["connection_name"] == "api-test-client"
    assert info["client_properties"]["product"] == "Pika Python Client Library"
    name = urllib.parse.quote(info["name"], safe="")
    assert api(fresh_hare, f"/api/connections/{name}")[1]["name"] == info["name"]
    assert [x["name"] for x in api(fresh_hare, "/api/vhosts/%2F/connections")[1]] == [info["name"]]
    o = api(fresh_hare, "/api/overview")[1]
    assert o["object_totals"]["connections"] == 1 and o["object_totals"]["channels"] == 2
    ch2.close()
    assert api(fresh_hare, "/api/connections")[1][0]["channels"] == 1

    # Closed from the API: the client is told 320 with the reason.
    assert api(fresh_hare, f"/api/connections/{name}", method="DELETE")[0] == 204
    closed = []
    try:
        for _ in range(500):  # bounded: 10 s at most
            if not c.is_open:
                break
            c.process_data_events(0.02)
    except pika.exceptions.ConnectionClosedByBroker as e:
        closed.append((e.reply_code, e.reply_text))
    assert closed == [(320, "CONNECTION_FORCED - Closed via management plugin")]
    wait_for(lambda: api(fresh_hare, "/api/connections")[1] == [], what="the list to empty")
    assert api(fresh_hare, f"/api/connections/{name}")[0] == 404


def test_an_import_with_a_vhosts_metadata_and_its_limits_keeps_both(hare):
    """RabbitMQ's exports carry a vhost's limits as a runtime parameter beside the vhost; an
    existing vhost takes both its new metadata and its limits."""
    assert api(hare, "/api/vhosts/imp-v", method="PUT", body={})[0] == 201
    defs = {
        "vhosts": [{"name": "imp-v", "description": "imported", "tags": ["a"]}],
        "parameters": [{"vhost": "imp-v", "component": "vhost-limits", "name": "limits", "value": {"max-queues": 7}}],
    }
    assert api(hare, "/api/definitions", method="POST", body=defs)[0] == 204
    status, v = api(hare, "/api/vhosts/imp-v")
    assert status == 200 and v["description"] == "imported" and v["tags"] == ["a"]
    assert api(hare, "/api/vhost-limits/imp-v")[1] == [{"vhost": "imp-v", "value": {"max-queues": 7}}]
    assert api(hare, "/api/vhosts/imp-v", method="DELETE")[0] == 204
