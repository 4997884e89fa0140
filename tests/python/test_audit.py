"""The audit log through pika and the management API: one JSON line for each kind of event
(logins accepted and refused, connections, refusals, declares, deletes, binds of durable and
transient objects, users, vhosts, permissions, definitions imports, policies, shovels) naming
who did it, from where and with what outcome; every event also on `amq.rabbitmq.event`;
size-based rotation; no event lost in a storm of declares."""
import json
import os

import pika
import pytest

from conftest import Hare, wait_for
from test_management_api import api
from test_security import add_user, connect, channel_refusal, connection_refusal, delete, put


def events(h, path=None):
    """The events written so far, oldest first (rotated files included)."""
    base = path or os.path.join(h.data_dir, "audit.log")
    out = []
    for n in range(10, 0, -1):
        if os.path.exists(f"{base}.{n}"):
            out += read_lines(f"{base}.{n}")
    if os.path.exists(base):
        out += read_lines(base)
    return out


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_event(h, pred, what, path=None):
    """The first event `pred` accepts, waiting for it to be written."""
    def find():
        return next((e for e in events(h, path) if pred(e)), None)
    return wait_for(find, timeout=10, what=what)


def named(event, name, **fields):
    def pred(e):
        return e["event"] == event and e["object"].get("name") == name and \
            all(e.get(k) == v for k, v in fields.items())
    return pred


@pytest.fixture(scope="module")
def hare():
    h = Hare()
    yield h
    h.stop()


def test_amqp_events_name_the_user_the_source_and_the_outcome(hare):
    add_user(hare, "auditor", "pw", perms=("^aud\\.", "^aud\\.", "^aud\\."))
    c = connect(hare, "auditor", "pw")
    login = wait_event(hare, named("user.authentication.success", "auditor"), "a login")
    assert login["via"] == "amqp" and login["source"].startswith("127.0.0.1:")
    assert login["object"]["auth_mechanism"] == "PLAIN" and login["outcome"] == "ok"
    opened = wait_event(hare, lambda e: e["event"] == "connection.created" and e["user"] == "auditor", "a connection")
    ch = c.channel()
    ch.queue_declare("aud.durable", durable=True, arguments={"x-max-length": 10})
    ch.queue_declare("aud.transient", auto_delete=True)
    ch.exchange_declare("aud.x", "topic", durable=True)
    ch.queue_bind("aud.durable", "aud.x", "a.#")
    ch.queue_unbind("aud.durable", "aud.x", "a.#")
    ch.exchange_delete("aud.x")
    ch.queue_delete("aud.durable")
    code, text = channel_refusal(lambda: ch.queue_declare("other"))
    assert code == 403
    c.close()

    q = wait_event(hare, named("queue.created", "aud.durable"), "queue.created")
    assert q["user"] == "auditor" and q["vhost"] == "/" and q["via"] == "amqp"
    assert q["object"]["durable"] is True and "x-max-length" in q["object"]["arguments"]
    t = wait_event(hare, named("queue.created", "aud.transient"), "a transient queue.created")
    assert t["object"]["durable"] is False and t["object"]["auto_delete"] is True
    x = wait_event(hare, named("exchange.created", "aud.x"), "exchange.created")
    assert x["object"]["type"] == "topic" and x["object"]["durable"] is True
    b = wait_event(hare, lambda e: e["event"] == "binding.created" and e["object"]["source_name"] == "aud.x",
                   "binding.created")
    assert b["object"]["destination_name"] == "aud.durable" and b["object"]["routing_key"] == "a.#"
    wait_event(hare, lambda e: e["event"] == "binding.deleted" and e["object"]["source_name"] == "aud.x",
               "binding.deleted")
    wait_event(hare, named("exchange.deleted", "aud.x", user="auditor"), "exchange.deleted")
    wait_event(hare, named("queue.deleted", "aud.durable", user="auditor"), "queue.deleted")
    refusal = wait_event(hare, named("access.refused", "other"), "access.refused")
    assert refusal["outcome"] == "refused" and refusal["user"] == "auditor"
    assert refusal["object"]["kind"] == "queue" and refusal["object"]["permission"] == "configure"
    assert refusal["reason"] == "access to queue 'other' in vhost '/' refused for user 'auditor'"
    closed = wait_event(hare, lambda e: e["event"] == "connection.closed" and e["user"] == "auditor",
                        "connection.closed")
    assert closed["object"]["name"] == opened["object"]["name"]

    # A wrong password and a vhost the user may not open: refused, with the reason given.
    connection_refusal(lambda: connect(hare, "auditor", "wrong"))
    failure = wait_event(hare, named("user.authentication.failure", "auditor"), "a refused login")
    assert failure["outcome"] == "refused" and "Login was refused" in failure["reason"]
    put(hare, "/api/vhosts/aud-v")
    connection_refusal(lambda: connect(hare, "auditor", "pw", vhost="aud-v"))
    denied = wait_event(hare, lambda e: e["event"] == "access.refused" and e["object"]["kind"] == "vhost",
                        "a vhost refusal")
    assert denied["vhost"] == "aud-v" and "access to vhost 'aud-v' refused" in denied["reason"]


def test_bindings_removed_with_their_queue_or_exchange_are_reported(hare):
    """As RabbitMQ: deleting a queue or an exchange reports each binding it took with it, and
    an auto-delete exchange left without bindings."""
    c = hare.connect()
    ch = c.channel()
    ch.exchange_declare("cas.src", "direct")
    ch.exchange_declare("cas.auto", "fanout", auto_delete=True)
    ch.exchange_declare("cas.out", "topic")
    ch.queue_declare("cas.q")
    ch.queue_bind("cas.q", "cas.src", "k1")
    ch.queue_bind("cas.q", "cas.src", "k2")
    ch.queue_bind("cas.q", "cas.auto", "")
    ch.exchange_bind("cas.src", "cas.out", "o.#")  # cas.out -> cas.src
    ch.queue_delete("cas.q")
    ch.exchange_delete("cas.out")
    c.close()

    def deleted(source, dest, key):
        return lambda e: e["event"] == "binding.deleted" and e["object"]["source_name"] == source and \
            e["object"]["destination_name"] == dest and e["object"]["routing_key"] == key
    for source, key in (("cas.src", "k1"), ("cas.src", "k2"), ("cas.auto", "")):
        e = wait_event(hare, deleted(source, "cas.q", key), f"binding.deleted {source} {key!r}")
        assert e["user"] == "guest" and e["object"]["destination_kind"] == "queue"
    wait_event(hare, named("exchange.deleted", "cas.auto"), "the auto-delete exchange's exchange.deleted")
    e = wait_event(hare, deleted("cas.out", "cas.src", "o.#"), "the deleted source's binding")
    assert e["object"]["destination_kind"] == "exchange"
    assert not any(x["event"] == "exchange.deleted" and x["object"]["name"] == "cas.src" for x in events(hare))


def test_http_changes_name_the_api_user(hare):
    add_user(hare, "ops", "pw", tags="administrator", perms=(".*", ".*", ".*"))
    user = wait_event(hare, named("user.created", "ops"), "user.created")
    assert user["via"] == "http" and user["user"] == "guest" and user["source"].startswith("127.0.0.1:")
    assert user["object"]["tags"] == "administrator"
    perm = wait_event(hare, lambda e: e["event"] == "permission.created" and e["object"].get("user") == "ops",
                      "permission.created")
    assert perm["vhost"] == "/" and perm["object"]["configure"] == ".*"
    status, _ = api(hare, "/api/queues/%2F/by-http", user="ops", password="pw", method="PUT",
                    body={"durable": True})
    assert status == 201
    q = wait_event(hare, named("queue.created", "by-http"), "queue.created over HTTP")
    assert q["user"] == "ops" and q["via"] == "http"
    put(hare, "/api/vhosts/aud-tmp")
    wait_event(hare, named("vhost.created", "aud-tmp"), "vhost.created")
    delete(hare, "/api/vhosts/aud-tmp")
    wait_event(hare, named("vhost.deleted", "aud-tmp"), "vhost.deleted")
    delete(hare, "/api/users/ops")
    wait_event(hare, named("user.deleted", "ops"), "user.deleted")
    status, _ = api(hare, "/api/definitions", method="POST",
                    body={"queues": [{"name": "imported", "vhost": "/", "durable": True}]})
    assert status in (201, 204)
    imported = wait_event(hare, lambda e: e["event"] == "definitions.imported", "definitions.imported")
    assert imported["object"]["queues"] == 1 and imported["user"] == "guest"
    # A wrong password on the API, and a user whose tags do not allow the request.
    assert api(hare, "/api/overview", password="wrong")[0] == 401
    wait_event(hare, lambda e: e["event"] == "user.authentication.failure" and e["via"] == "http",
               "a refused API login")
    add_user(hare, "plain", "pw")
    assert api(hare, "/api/users", user="plain", password="pw")[0] == 401
    refused = wait_event(hare, lambda e: e["event"] == "access.refused" and e["object"]["kind"] == "http",
                         "a refused API request")
    assert refused["user"] == "plain" and refused["object"]["name"] == "GET /api/users"


def test_policy_and_shovel_changes_are_reported(hare):
    put(hare, "/api/policies/%2F/aud-pol", {"pattern": "^aud-pq", "definition": {"max-length": 5}, "apply-to": "queues"})
    pol = wait_event(hare, named("policy.set", "aud-pol"), "policy.set")
    assert pol["user"] == "guest" and pol["via"] == "http" and pol["object"]["pattern"] == "^aud-pq"
    assert json.loads(pol["object"]["definition"]) == {"max-length": 5}
    put(hare, "/api/queues/%2F/aud-pq", {"durable": False})
    put(hare, "/api/policies/%2F/aud-pol", {"pattern": "^aud-pq", "definition": {"max-length": 6}, "apply-to": "queues"})
    wait_event(hare, named("queue.policy.updated", "aud-pq"), "queue.policy.updated")
    delete(hare, "/api/policies/%2F/aud-pol")
    wait_event(hare, named("policy.cleared", "aud-pol"), "policy.cleared")
    wait_event(hare, named("queue.policy.cleared", "aud-pq"), "queue.policy.cleared")
    put(hare, "/api/operator-policies/%2F/aud-op", {"pattern": "x", "definition": {"max-length": 5}})
    delete(hare, "/api/operator-policies/%2F/aud-op")
    wait_event(hare, named("operator.policy.cleared", "aud-op"), "operator.policy.cleared")
    put(hare, "/api/parameters/shovel/%2F/aud-sh", {"value": {"src-uri": "amqp://", "src-queue": "aud-a",
                                                               "dest-uri": "amqp://", "dest-queue": "aud-b"}})
    sh = wait_event(hare, named("parameter.set", "aud-sh"), "parameter.set")
    assert sh["object"]["component"] == "shovel"
    delete(hare, "/api/parameters/shovel/%2F/aud-sh")
    wait_event(hare, named("parameter.cleared", "aud-sh"), "parameter.cleared")
    delete(hare, "/api/queues/%2F/aud-pq")


def test_events_are_published_to_amq_rabbitmq_event(hare):
    c = hare.connect()
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.rabbitmq.event", "queue.*")
    ch.queue_declare("watched", durable=False)
    ch.queue_delete("watched")

    def next_message():
        m, props, body = ch.basic_get(q, auto_ack=True)
        return (m, props, body) if m else None

    seen = []
    for _ in range(20):
        m, props, body = wait_for(next_message, what="an event message")
        seen.append((m.routing_key, props.headers.get("name")))
        if (m.routing_key, props.headers.get("name")) == ("queue.deleted", "watched"):
            break
        if m.routing_key == "queue.created" and props.headers.get("name") == "watched":
            assert props.headers["vhost"] == "/"
            assert props.headers["user_who_performed_action"] == "guest"
            assert props.headers["durable"] is False
            assert isinstance(props.headers["timestamp_in_ms"], int) and props.delivery_mode == 2
            assert body == b""
    assert ("queue.created", "watched") in seen and ("queue.deleted", "watched") in seen, seen
    # The exchange is internal: clients cannot publish to it.
    code, _ = channel_refusal(lambda: (ch.basic_publish("amq.rabbitmq.event", "queue.created", b"forged"),
                                       ch.queue_declare(q, passive=True)))
    assert code == 403
    c.close()


def test_rotation_and_no_event_lost_in_a_declare_storm(tmp_path):
    config = tmp_path / "hare.toml"
    log = tmp_path / "audit" / "audit.log"
    config.write_text(f'audit_log = "{log}"\naudit_log_max_bytes = "64KB"\naudit_log_files = 3\n')
    h = Hare(extra_args=["--config", str(config)])
    try:
        c = h.connect()
        ch = c.channel()
        n = 600
        for i in range(n):
            ch.queue_declare(f"storm-{i}", durable=i % 2 == 0)
        c.close()

        def all_written():
            got = [e for e in events(h, str(log)) if e["event"] == "queue.created"]
            return got if len(got) >= n else None
        # Rotated files hold at most 3 x 64 KB: the storm (~300 B an event) fits.
        created = wait_for(all_written, timeout=20, what="every queue.created")
        assert sorted(e["object"]["name"] for e in created) == sorted(f"storm-{i}" for i in range(n))
        assert os.path.exists(f"{log}.1") and os.path.exists(f"{log}.2")
        assert not os.path.exists(f"{log}.4")
        for p in [log, f"{log}.1", f"{log}.2"]:
            assert os.path.getsize(p) <= 64_000
        # A restart appends to the same log.
        h.restart()
        c = h.connect()
        c.channel().queue_declare("after-restart")
        c.close()
        wait_event(h, named("queue.created", "after-restart"), "an event after the restart", path=str(log))
    finally:
        h.stop()


def test_audit_log_off(tmp_path):
    h = Hare(extra_args=["--audit-log", "off"])
    try:
        c = h.connect()
        c.channel().queue_declare("quiet")
        c.close()
        assert not os.path.exists(os.path.join(h.data_dir, "audit.log"))
    finally:
        h.stop()
