"""The management HTTP API, as RabbitMQ's plugin answers: paths, JSON field names, basic auth
with the broker's users, URL-encoded vhost names, 401 and 404 bodies."""
import base64
import json
import urllib.error
import urllib.request

import pika


def api(hare, path, user="guest", password="guest"):
    """(status, JSON body) of a GET."""
    req = urllib.request.Request(f"http://127.0.0.1:{hare.http_port}{path}")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_requests_without_a_valid_user_get_rabbitmqs_401(hare):
    for user, password in [(None, None), ("guest", "wrong"), ("nobody", "guest")]:
        status, body = api(hare, "/api/overview", user, password)
        assert status == 401
        assert body == {"error": "not_authorized", "reason": "Not_Authorized"}
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
            "properties_key": "a.#",
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
