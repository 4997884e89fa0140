"""Policies and operator policies, as an operator sets them (the management API and `hare ctl`)
and as clients feel them (pika): limits, overflow, TTL, dead-lettering and alternate exchanges
applied to queues and exchanges that exist and to those declared later, at once, across a
kill -9, and in the audit log. The rules themselves are compared with RabbitMQ's request by
request in tests/conformance (http_scenarios.py)."""
import json
import subprocess

import pika
import pytest
from pika.exceptions import NackError, UnroutableError

import helpers
from conftest import HARE_BIN, Hare, wait_for


def api(hare, method, path, body=None, user=("guest", "guest")):
    return helpers.api(hare.http_port, method, path, body, user)


def set_policy(hare, name, pattern, definition, priority=0, apply_to="all", kind="policies"):
    status, body = api(hare, "PUT", f"/api/{kind}/%2F/{name}",
                       {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": apply_to})
    assert status in (201, 204), body


def clear_policy(hare, name, kind="policies"):
    status, body = api(hare, "DELETE", f"/api/{kind}/%2F/{name}")
    assert status == 204, body


def count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


@pytest.fixture
def broker():
    h = Hare()
    yield h
    h.stop()


def test_a_policy_bounds_queues_declared_later_and_those_already_there(broker):
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("orders.old")
    for i in range(5):
        ch.basic_publish("", "orders.old", f"m{i}".encode())
    # Set on a queue holding 5: it drops from the head at once, down to 2.
    set_policy(broker, "bound", "^orders\\.", {"max-length": 2, "overflow": "reject-publish"}, apply_to="queues")
    assert count(ch, "orders.old") == 2
    assert [ch.basic_get("orders.old", auto_ack=True)[2] for _ in range(2)] == [b"m3", b"m4"]
    # A queue declared later gets it too; with reject-publish the third publish is nacked.
    ch.queue_declare("orders.new")
    ch.basic_publish("", "orders.new", b"1")
    ch.basic_publish("", "orders.new", b"2")
    with pytest.raises(NackError):
        ch.basic_publish("", "orders.new", b"3")
    # The queue's own lower x-max-length wins over the policy's.
    ch.queue_declare("orders.own", arguments={"x-max-length": 1})
    ch.basic_publish("", "orders.own", b"a")
    with pytest.raises(NackError):
        ch.basic_publish("", "orders.own", b"b")
    # A queue the pattern does not match is not bounded.
    ch.queue_declare("other")
    for i in range(5):
        ch.basic_publish("", "other", b"x")
    assert count(ch, "other") == 5
    status, q = api(broker, "GET", "/api/queues/%2F/orders.new")
    assert (q["policy"], q["effective_policy_definition"]) == ("bound", {"max-length": 2, "overflow": "reject-publish"})
    # Cleared: the queue takes more again.
    clear_policy(broker, "bound")
    ch.basic_publish("", "orders.new", b"3")
    assert count(ch, "orders.new") == 3
    assert api(broker, "GET", "/api/queues/%2F/orders.new")[1]["policy"] is None
    c.close()


def test_an_operator_policy_caps_what_a_policy_allows(broker):
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    set_policy(broker, "generous", "^jobs$", {"max-length": 100, "overflow": "reject-publish"}, priority=5)
    set_policy(broker, "cap", ".*", {"max-length": 3}, kind="operator-policies", apply_to="queues")
    ch.queue_declare("jobs")
    for i in range(3):
        ch.basic_publish("", "jobs", b"j")
    with pytest.raises(NackError):
        ch.basic_publish("", "jobs", b"j")
    q = api(broker, "GET", "/api/queues/%2F/jobs")[1]
    assert (q["policy"], q["operator_policy"]) == ("generous", "cap")
    assert q["effective_policy_definition"] == {"max-length": 3, "overflow": "reject-publish"}
    c.close()


def test_dead_letters_ttl_and_an_alternate_exchange_from_policies(broker):
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work")
    set_policy(broker, "dl", "^work$", {"dead-letter-exchange": "dlx", "message-ttl": 0}, apply_to="queues")
    # Published to no consumer with a TTL of 0: dead-lettered at once, as expired.
    ch.basic_publish("", "work", b"late")
    wait_for(lambda: count(ch, "dead") == 1, timeout=5, what="the dead letter")
    method, props, body = ch.basic_get("dead", auto_ack=True)
    assert body == b"late" and props.headers["x-death"][0]["reason"] == "expired"
    # A rejected message goes the same way once the TTL is gone.
    set_policy(broker, "dl", "^work$", {"dead-letter-exchange": "dlx"}, apply_to="queues")
    ch.basic_publish("", "work", b"bad")
    method, _, _ = ch.basic_get("work")
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_for(lambda: count(ch, "dead") == 1, timeout=5, what="the rejected message")
    assert ch.basic_get("dead", auto_ack=True)[1].headers["x-death"][0]["reason"] == "rejected"
    # An alternate exchange from a policy catches what its exchange cannot route.
    ch.exchange_declare("ae", "fanout")
    ch.queue_declare("caught")
    ch.queue_bind("caught", "ae")
    ch.exchange_declare("events", "direct")
    with pytest.raises(UnroutableError):
        ch.basic_publish("events", "nobody", b"lost", mandatory=True)
    set_policy(broker, "ae", "^events$", {"alternate-exchange": "ae"}, apply_to="exchanges")
    ch.basic_publish("events", "nobody", b"caught", mandatory=True)
    assert count(ch, "caught") == 1
    assert api(broker, "GET", "/api/exchanges/%2F/events")[1]["policy"] == "ae"
    c.close()


def test_policies_and_their_effect_survive_kill_9(broker):
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    set_policy(broker, "keep", "^kept$", {"max-length": 2, "overflow": "reject-publish"}, apply_to="queues")
    set_policy(broker, "cap", "^kept$", {"message-ttl": 600000}, kind="operator-policies", apply_to="queues")
    ch.queue_declare("kept", durable=True)
    ch.basic_publish("", "kept", b"1", pika.BasicProperties(delivery_mode=2))
    c.close()
    broker.restart(graceful=False)
    assert api(broker, "GET", "/api/policies/%2F/keep")[0] == 200
    q = api(broker, "GET", "/api/queues/%2F/kept")[1]
    assert (q["policy"], q["operator_policy"]) == ("keep", "cap")
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "kept", b"2", pika.BasicProperties(delivery_mode=2))
    with pytest.raises(NackError):
        ch.basic_publish("", "kept", b"3", pika.BasicProperties(delivery_mode=2))
    c.close()
    # Cleared, restarted: gone for good.
    clear_policy(broker, "keep")
    broker.restart(graceful=False)
    assert api(broker, "GET", "/api/policies/%2F/keep")[0] == 404
    assert api(broker, "GET", "/api/queues/%2F/kept")[1]["policy"] is None


def test_a_policymaker_sets_policies_in_its_vhosts_only_an_administrator_operator_policies(broker):
    assert api(broker, "PUT", "/api/users/pm", {"password": "pw", "tags": "policymaker"})[0] == 201
    assert api(broker, "PUT", "/api/users/mg", {"password": "pw", "tags": "management"})[0] == 201
    for u in ("pm", "mg"):
        api(broker, "PUT", f"/api/permissions/%2F/{u}", {"configure": ".*", "write": ".*", "read": ".*"})
    body = {"pattern": "^x", "definition": {"max-length": 1}}
    assert api(broker, "PUT", "/api/policies/%2F/p", body, user=("pm", "pw"))[0] == 201
    assert api(broker, "PUT", "/api/policies/%2F/p", body, user=("mg", "pw"))[0] == 401
    assert api(broker, "GET", "/api/policies", user=("mg", "pw"))[0] == 200
    assert api(broker, "PUT", "/api/operator-policies/%2F/o", body, user=("pm", "pw"))[0] == 401
    # Not in a vhost it has no permissions in.
    assert api(broker, "PUT", "/api/vhosts/other")[0] == 201
    assert api(broker, "PUT", "/api/policies/other/p", body, user=("pm", "pw"))[0] == 401


def test_ctl_sets_lists_and_clears_policies(broker):
    def ctl(*argv):
        r = subprocess.run([HARE_BIN, "ctl", "--url", f"http://127.0.0.1:{broker.http_port}", *argv],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    ctl("set-policy", "lazy", "^q", '{"max-length": 7}', "--priority", "3", "--apply-to", "queues")
    ctl("set-operator-policy", "cap", ".*", '{"message-ttl": 1000}')
    assert api(broker, "GET", "/api/policies/%2F/lazy")[1] == {
        "vhost": "/", "name": "lazy", "pattern": "^q", "apply-to": "queues", "definition": {"max-length": 7},
        "priority": 3,
    }
    listed = json.loads(ctl("--format", "json", "list", "policies"))
    assert [p["name"] for p in listed] == ["lazy"]
    assert "cap" in ctl("list", "operator-policies")
    r = subprocess.run([HARE_BIN, "ctl", "--url", f"http://127.0.0.1:{broker.http_port}", "set-policy", "bad", "^q",
                        '{"max-length": "ten"}'], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "is not a valid maximum length" in r.stderr
    ctl("clear-policy", "lazy")
    ctl("clear-operator-policy", "cap")
    assert api(broker, "GET", "/api/policies")[1] == []
    assert api(broker, "GET", "/api/operator-policies")[1] == []
