"""Users, vhosts, permissions and limits through pika and the management API: every refusal with
RabbitMQ's reply code and text, changes applied to open connections, and all of it kept across a
kill -9."""
import base64
import hashlib
import os

import pika
import pytest

from conftest import Hare, module_hare
from test_management_api import api

hare = module_hare()


def put(h, path, body=None):
    status, out = api(h, path, method="PUT", body=body or {})
    assert status in (201, 204), (path, status, out)


def delete(h, path):
    status, out = api(h, path, method="DELETE")
    assert status == 204, (path, status, out)


def add_user(h, name, password, tags="", vhost="/", perms=None):
    put(h, f"/api/users/{name}", {"password": password, "tags": tags})
    if perms is not None:
        configure, write, read = perms
        put(h, f"/api/permissions/{vhost.replace('/', '%2F')}/{name}",
            {"configure": configure, "write": write, "read": read})


def connect(h, user, password, vhost="/"):
    creds = pika.PlainCredentials(user, password)
    return pika.BlockingConnection(h.params(credentials=creds, virtual_host=vhost))


def channel_refusal(fn):
    """(reply code, reply text) of the channel error `fn` raises."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        fn()
    return e.value.reply_code, e.value.reply_text


def connection_refusal(fn):
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        fn()
    return str(e.value)


def test_a_user_without_permissions_cannot_open_the_vhost(hare):
    add_user(hare, "nobody", "pw")
    text = connection_refusal(lambda: connect(hare, "nobody", "pw"))
    assert "530" in text and "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'" in text
    # A wrong password: RabbitMQ's 403 at login.
    text = connection_refusal(lambda: connect(hare, "nobody", "wrong"))
    assert "403" in text and "Login was refused using authentication mechanism PLAIN" in text


def test_every_operation_is_checked_where_rabbitmq_checks_it(hare):
    add_user(hare, "alice", "pw", perms=("^alice-", "^alice-", "^alice-"))
    g = hare.connect()
    gch = g.channel()
    gch.queue_declare("shared")
    gch.exchange_declare("bob-ae", "fanout")
    c = connect(hare, "alice", "pw")

    def expect(op, text):
        ch = c.channel()
        code, got = channel_refusal(lambda: op(ch))
        assert (code, got) == (403, "ACCESS_REFUSED - " + text), op

    refused = "refused for user 'alice'"
    ok = c.channel()
    ok.queue_declare("alice-q")
    ok.exchange_declare("alice-x", "direct")
    ok.queue_bind("alice-q", "alice-x", "k")
    ok.basic_publish("alice-x", "k", b"mine")
    assert ok.basic_get("alice-q", auto_ack=True)[2] == b"mine"
    expect(lambda ch: ch.queue_declare("bob-q"), f"access to queue 'bob-q' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_declare("shared", passive=True), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_delete("shared"), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_purge("shared"), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.basic_get("shared"), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.basic_consume("shared", lambda *a: None), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.exchange_declare("bob-x", "direct"), f"access to exchange 'bob-x' in vhost '/' {refused}")
    expect(lambda ch: ch.exchange_delete("bob-ae"), f"access to exchange 'bob-ae' in vhost '/' {refused}")
    # Binding: write on the destination, then read on the source.
    expect(lambda ch: ch.queue_bind("shared", "alice-x"), f"access to queue 'shared' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_bind("alice-q", "amq.direct"), f"access to exchange 'amq.direct' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_unbind("alice-q", "amq.direct"),
           f"access to exchange 'amq.direct' in vhost '/' {refused}")
    # The default exchange is checked as amq.default; the refusal comes with the next round trip.
    def publish_default(ch):
        ch.basic_publish("", "alice-q", b"x")
        ch.queue_declare("alice-q", passive=True)
    expect(publish_default, f"access to exchange 'amq.default' in vhost '/' {refused}")
    # Creating with an alternate or dead-letter exchange needs write on it.
    expect(lambda ch: ch.exchange_declare("alice-ax", "direct", arguments={"alternate-exchange": "bob-ae"}),
           f"access to exchange 'bob-ae' in vhost '/' {refused}")
    expect(lambda ch: ch.queue_declare("alice-dl", arguments={"x-dead-letter-exchange": "bob-ae"}),
           f"access to exchange 'bob-ae' in vhost '/' {refused}")
    # A server-named queue needs configure on its generated name, as in RabbitMQ.
    ch = c.channel()
    code, text = channel_refusal(lambda: ch.queue_declare("", exclusive=True))
    assert code == 403 and text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")
    c.close()
    g.close()


def test_permission_changes_apply_to_open_connections(hare):
    add_user(hare, "carl", "pw", perms=(".*", ".*", ".*"))
    c = connect(hare, "carl", "pw")
    ch = c.channel()
    ch.queue_declare("carl-q")
    ch.basic_publish("", "carl-q", b"1")
    put(hare, "/api/permissions/%2F/carl", {"configure": ".*", "write": "^$", "read": ".*"})
    def publish(ch):
        ch.basic_publish("", "carl-q", b"2")
        ch.queue_declare("carl-q", passive=True)
    code, text = channel_refusal(lambda: publish(ch))
    assert code == 403 and "access to exchange 'amq.default'" in text
    # Reading is still allowed, and the first message is there.
    ch = c.channel()
    assert ch.basic_get("carl-q", auto_ack=True)[2] == b"1"
    c.close()


def test_topic_permissions_restrict_routing_keys(hare):
    add_user(hare, "dora", "pw", perms=(".*", ".*", ".*"))
    put(hare, "/api/topic-permissions/%2F/dora",
        {"exchange": "amq.topic", "write": "^{username}\\.", "read": "^public\\."})
    c = connect(hare, "dora", "pw")
    ch = c.channel()
    ch.queue_declare("dora-q")
    ch.queue_bind("dora-q", "amq.topic", "public.#")
    ch.basic_publish("amq.topic", "dora.status", b"ok")
    ch.queue_declare("dora-q", passive=True)
    code, text = channel_refusal(lambda: ch.queue_bind("dora-q", "amq.topic", "private.#"))
    assert (code, text) == (403, "ACCESS_REFUSED - access to topic 'private.#' in exchange 'amq.topic' "
                                 "in vhost '/' refused for user 'dora'")
    ch = c.channel()

    def publish(ch):
        ch.basic_publish("amq.topic", "eve.status", b"no")
        ch.queue_declare("dora-q", passive=True)
    code, text = channel_refusal(lambda: publish(ch))
    assert code == 403 and "access to topic 'eve.status' in exchange 'amq.topic'" in text
    # Other exchanges are not restricted.
    ch = c.channel()
    ch.basic_publish("amq.direct", "anything", b"x")
    ch.queue_declare("dora-q", passive=True)
    c.close()
    status, body = api(hare, "/api/topic-permissions/%2F/dora")
    assert status == 200 and body[0]["write"] == "^{username}\\."


def test_vhosts_are_isolated_and_deleting_one_closes_its_connections(hare):
    put(hare, "/api/vhosts/tenant-a", {"description": "first tenant"})
    add_user(hare, "ten", "pw", vhost="tenant-a", perms=(".*", ".*", ".*"))
    c = connect(hare, "ten", "pw", vhost="tenant-a")
    ch = c.channel()
    ch.queue_declare("jobs", durable=True)
    ch.basic_publish("", "jobs", b"t", pika.BasicProperties(delivery_mode=2))
    ch.queue_declare("jobs", passive=True)
    # Not in '/', and the tenant cannot open '/'.
    g = hare.connect()
    gch = g.channel()
    code, _ = channel_refusal(lambda: gch.queue_declare("jobs", passive=True))
    assert code == 404
    text = connection_refusal(lambda: connect(hare, "ten", "pw", vhost="/"))
    assert "access to vhost '/' refused for user 'ten'" in text
    status, v = api(hare, "/api/vhosts/tenant-a")
    assert status == 200 and v["description"] == "first tenant" and v["messages"] == 1
    delete(hare, "/api/vhosts/tenant-a")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(200):
            c.process_data_events(time_limit=0.05)
    assert (e.value.reply_code, e.value.reply_text) == (320, "CONNECTION_FORCED - vhost 'tenant-a' is deleted")
    assert api(hare, "/api/queues/tenant-a/jobs")[0] == 404
    assert api(hare, "/api/vhosts/tenant-a")[0] == 404
    text = connection_refusal(lambda: connect(hare, "ten", "pw", vhost="tenant-a"))
    assert "530" in text
    g.close()


def test_deleting_a_user_closes_its_connections(hare):
    add_user(hare, "gone", "pw", perms=(".*", ".*", ".*"))
    c = connect(hare, "gone", "pw")
    delete(hare, "/api/users/gone")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(200):
            c.process_data_events(time_limit=0.05)
    assert e.value.reply_code == 320 and "user 'gone' is deleted" in e.value.reply_text
    assert "Login was refused" in connection_refusal(lambda: connect(hare, "gone", "pw"))


def test_limits_are_refused_with_rabbitmqs_errors(hare):
    put(hare, "/api/vhosts/lim")
    put(hare, "/api/permissions/lim/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    put(hare, "/api/vhost-limits/lim/max-connections", {"value": 1})
    put(hare, "/api/vhost-limits/lim/max-queues", {"value": 2})
    assert api(hare, "/api/vhost-limits/lim")[1] == [{"vhost": "lim", "value": {"max-connections": 1, "max-queues": 2}}]
    first = connect(hare, "guest", "guest", vhost="lim")
    text = connection_refusal(lambda: connect(hare, "guest", "guest", vhost="lim"))
    assert "NOT_ALLOWED - access to vhost 'lim' refused for user 'guest': connection limit (1) is reached" in text
    ch = first.channel()
    ch.queue_declare("q1")
    ch.queue_declare("q2")
    code, text = channel_refusal(lambda: ch.queue_declare("q3"))
    assert (code, text) == (406, "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost 'lim' (2) is reached")
    first.close()
    # Per user: connections and channels.
    add_user(hare, "lim-user", "pw", perms=(".*", ".*", ".*"))
    put(hare, "/api/user-limits/lim-user/max-connections", {"value": 1})
    put(hare, "/api/user-limits/lim-user/max-channels", {"value": 2})
    c = connect(hare, "lim-user", "pw")
    text = connection_refusal(lambda: connect(hare, "lim-user", "pw"))
    assert "connection refused for user 'lim-user': user connection limit (1) is reached" in text
    c.channel()
    c.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        c.channel()
    assert e.value.reply_code == 530
    assert e.value.reply_text == ("NOT_ALLOWED - number of channels opened for user 'lim-user' has reached "
                                  "the maximum allowed user limit of 2")
    # A limit removed no longer applies.
    delete(hare, "/api/user-limits/lim-user/max-connections")
    connect(hare, "lim-user", "pw").close()


def test_management_tags_decide_what_a_user_sees_and_does(hare):
    put(hare, "/api/vhosts/mgmt-only")
    # As RabbitMQ: the user who creates a vhost gets every permission in it.
    assert api(hare, "/api/permissions/mgmt-only/guest")[1]["configure"] == ".*"
    delete(hare, "/api/permissions/mgmt-only/guest")
    # The API acts as its user: even an administrator needs permissions in the vhost.
    status, body = api(hare, "/api/queues/mgmt-only/mq", method="PUT", body={"durable": False})
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Access refused."})
    put(hare, "/api/permissions/mgmt-only/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    put(hare, "/api/queues/mgmt-only/mq", {"durable": False})
    add_user(hare, "mon", "pw", tags="monitoring")
    add_user(hare, "man", "pw", tags=["management"], vhost="mgmt-only", perms=("^man-", ".*", ".*"))
    assert api(hare, "/api/queues/mgmt-only/man-q", "man", "pw", method="PUT", body={})[0] == 201
    status, body = api(hare, "/api/queues/mgmt-only/other", "man", "pw", method="PUT", body={})
    assert (status, body["reason"]) == (401, "Access refused.")
    add_user(hare, "plain", "pw", vhost="/", perms=(".*", ".*", ".*"))
    assert api(hare, "/api/overview", "plain", "pw") == (401, {"error": "not_authorised", "reason": "Not management user"})
    assert api(hare, "/api/whoami", "mon", "pw") == (200, {"name": "mon", "tags": ["monitoring"]})
    assert api(hare, "/api/nodes", "mon", "pw")[0] == 200
    assert api(hare, "/api/nodes", "man", "pw")[1]["reason"] == "Not monitor user"
    for user in ("mon", "man"):
        status, body = api(hare, "/api/users/x", user, "pw", method="PUT", body={"password": "x"})
        assert (status, body["reason"]) == (401, "Not administrator user"), user
        assert api(hare, "/api/definitions", user, "pw")[0] == 401
    # Monitoring sees every vhost; management only those it has permissions in.
    mon_vhosts = {q["vhost"] for q in api(hare, "/api/queues", "mon", "pw")[1]}
    assert {"/", "mgmt-only"} <= mon_vhosts
    assert {q["vhost"] for q in api(hare, "/api/queues", "man", "pw")[1]} == {"mgmt-only"}
    assert [v["name"] for v in api(hare, "/api/vhosts", "man", "pw")[1]] == ["mgmt-only"]
    assert api(hare, "/api/queues/%2F", "man", "pw") == (401, {"error": "not_authorised", "reason": "Access refused."})
    assert api(hare, "/api/queues/mgmt-only/mq", "man", "pw")[0] == 200


def rabbitmq_hash(password, salt=b"\x01\x02\x03\x04"):
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def test_imported_users_log_in_with_their_passwords_and_everything_survives_kill_9(fresh_hare):
    definitions = {
        "users": [
            {"name": "importer", "password_hash": rabbitmq_hash("imported-pw"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management", "limits": {}},
        ],
        "vhosts": [{"name": "/"}, {"name": "imported"}],
        "permissions": [{"user": "importer", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}],
        "topic_permissions": [{"user": "importer", "vhost": "imported", "exchange": "amq.topic",
                               "write": "^a\\.", "read": ".*"}],
        "queues": [{"name": "iq", "vhost": "imported", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [],
        "bindings": [],
    }
    assert api(fresh_hare, "/api/definitions", method="POST", body=definitions)[0] == 204
    connect(fresh_hare, "importer", "imported-pw", vhost="imported").close()
    fresh_hare.restart(graceful=False)
    c = connect(fresh_hare, "importer", "imported-pw", vhost="imported")
    ch = c.channel()
    ch.queue_declare("iq", passive=True)
    code, _ = channel_refusal(lambda: (ch.basic_publish("amq.topic", "b.x", b""), ch.queue_declare("iq", passive=True)))
    assert code == 403
    c.close()
    status, out = api(fresh_hare, "/api/definitions")
    assert status == 200
    assert {u["name"] for u in out["users"]} == {"guest", "importer"}
    assert [u["tags"] for u in out["users"] if u["name"] == "importer"] == [["management"]]
    assert {v["name"] for v in out["vhosts"]} == {"/", "imported"}
    assert len(out["topic_permissions"]) == 1


def test_the_default_user_can_be_chosen_or_left_out():
    h = Hare(extra_args=["--default-user", "admin", "--default-pass", "s3cret"])
    try:
        connect(h, "admin", "s3cret").close()
        assert "Login was refused" in connection_refusal(lambda: connect(h, "guest", "guest"))
        assert api(h, "/api/whoami", "admin", "s3cret")[1]["tags"] == ["administrator"]
    finally:
        h.stop()
    h = Hare(extra_args=["--default-user", ""])
    try:
        assert "Login was refused" in connection_refusal(lambda: connect(h, "guest", "guest"))
        assert api(h, "/api/overview")[0] == 401
    finally:
        h.stop()


def test_a_channel_has_at_most_consumer_max_per_channel_consumers(tmp_path):
    config = tmp_path / "hare.toml"
    config.write_text("consumer_max_per_channel = 2\n")
    h = Hare(extra_args=["--config", str(config)])
    try:
        c = h.connect()
        ch = c.channel()
        ch.queue_declare("many")
        ch.basic_consume("many", lambda *a: None)
        ch.basic_consume("many", lambda *a: None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            ch.basic_consume("many", lambda *a: None)
        assert (e.value.reply_code, e.value.reply_text) == (
            530, "NOT_ALLOWED - reached maximum (2) of consumers per channel")
        # Another channel has its own count.
        c = h.connect()
        other = c.channel()
        other.basic_consume("many", lambda *a: None)
        c.close()
    finally:
        h.stop()
