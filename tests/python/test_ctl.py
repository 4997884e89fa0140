"""`hare ctl` against a running broker: declare, publish, list, get, purge, delete, export and
import, close a connection; and the errors a person sees when the broker is not there or the
login is wrong."""
import json
import os
import socket
import subprocess
import tempfile

import pika

from conftest import HARE_BIN, wait_for


def ctl(hare, *args, user="guest", password="guest", check=True, port=None):
    out = subprocess.run(
        [HARE_BIN, "ctl", "--url", f"http://127.0.0.1:{port or hare.http_port}", "--user", user, "--password", password, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def jctl(hare, *args):
    return json.loads(ctl(hare, "--format", "json", *args).stdout)


def test_declare_publish_list_get_purge_delete(hare):
    ctl(hare, "declare", "queue", "ctl-q", "--durable", "--arguments", '{"x-max-length": 100}')
    ctl(hare, "declare", "exchange", "ctl-x", "--type", "topic")
    ctl(hare, "declare", "binding", "--source", "ctl-x", "--destination", "ctl-q", "--routing-key", "order.#")
    assert "message published" in ctl(hare, "publish", "--exchange", "ctl-x", "--routing-key", "order.new", "--payload", "one").stdout
    assert "NOT routed" in ctl(hare, "publish", "--exchange", "ctl-x", "--routing-key", "other", "--payload", "lost").stdout
    ctl(hare, "publish", "--routing-key", "ctl-q", "--payload", "two")
    queues = jctl(hare, "list", "queues")
    q = [x for x in queues if x["name"] == "ctl-q"][0]
    assert q["durable"] is True and q["arguments"] == {"x-max-length": 100} and q["messages_ready"] == 2
    table = ctl(hare, "list", "queues").stdout
    assert table.splitlines()[0].split() == ["vhost", "name", "type", "durable", "messages_ready", "messages_unacknowledged", "consumers"]
    assert any(line.split()[:2] == ["/", "ctl-q"] for line in table.splitlines())
    bindings = jctl(hare, "list", "bindings")
    assert any(b["source"] == "ctl-x" and b["routing_key"] == "order.#" for b in bindings)
    got = jctl(hare, "get", "ctl-q", "--count", "1", "--ackmode", "ack_requeue_false")
    assert got[0]["payload"] == "one" and got[0]["exchange"] == "ctl-x"
    ctl(hare, "purge", "ctl-q")
    assert [x for x in jctl(hare, "list", "queues") if x["name"] == "ctl-q"][0]["messages_ready"] == 0
    ctl(hare, "delete", "binding", "--source", "ctl-x", "--destination", "ctl-q", "--properties-key", "order.#")
    assert not any(b["source"] == "ctl-x" for b in jctl(hare, "list", "bindings"))
    ctl(hare, "delete", "queue", "ctl-q")
    ctl(hare, "delete", "exchange", "ctl-x")
    assert not any(x["name"] == "ctl-q" for x in jctl(hare, "list", "queues"))
    overview = jctl(hare, "overview")
    assert overview["product_name"] == "Hare"
    assert jctl(hare, "list", "nodes")[0]["name"] == "hare@localhost"


def test_export_and_import_definitions(hare):
    ctl(hare, "declare", "queue", "ctl-exported", "--durable")
    path = os.path.join(tempfile.mkdtemp(), "defs.json")
    ctl(hare, "export", path)
    with open(path) as f:
        defs = json.load(f)
    assert any(q["name"] == "ctl-exported" for q in defs["queues"])
    ctl(hare, "delete", "queue", "ctl-exported")
    ctl(hare, "import", path)
    assert any(q["name"] == "ctl-exported" for q in jctl(hare, "list", "queues"))
    ctl(hare, "delete", "queue", "ctl-exported")


def test_close_a_connection(hare):
    c = hare.connect()
    name = wait_for(lambda: next((x["name"] for x in jctl(hare, "list", "connections")), None), what="the connection listed")
    ctl(hare, "close-connection", name, "--reason", "maintenance")
    closed_by = []

    def closed():
        try:
            c.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as e:
            closed_by.append(e)
            return True
        return not c.is_open

    wait_for(closed, timeout=10, what="the connection closed by the broker")
    assert closed_by and closed_by[0].reply_code == 320 and closed_by[0].reply_text == "CONNECTION_FORCED - maintenance"


def test_clear_errors_when_unreachable_or_refused(hare):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = ctl(hare, "list", "queues", check=False, port=free)
    assert out.returncode == 2
    assert "cannot reach the management API" in out.stderr
    out = ctl(hare, "list", "queues", password="wrong", check=False)
    assert out.returncode == 1
    assert "access refused for user 'guest'" in out.stderr
    out = ctl(hare, "delete", "queue", "no-such-queue", "--if-empty", check=False)
    assert out.returncode == 1 and "404" in out.stderr
    out = ctl(hare, "declare", "queue", "x", "--arguments", "not json", check=False)
    assert out.returncode == 1 and "--arguments is not JSON" in out.stderr


def test_users_vhosts_permissions_and_limits(hare):
    ctl(hare, "add-vhost", "ctl-vh")
    ctl(hare, "add-user", "ctl-app", "pw1", "--tags", "management")
    ctl(hare, "-V", "ctl-vh", "set-permissions", "ctl-app", "^ctl-", "^ctl-", "^ctl-")
    ctl(hare, "-V", "ctl-vh", "set-limit", "max-queues", "1")
    ctl(hare, "set-limit", "max-channels", "5", "--user", "ctl-app")
    creds = pika.PlainCredentials("ctl-app", "pw1")
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", hare.port, "ctl-vh", creds))
    ch = c.channel()
    ch.queue_declare("ctl-one")
    with __import__("pytest").raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("ctl-two")
    assert e.value.reply_code == 406
    c.close()
    users = {u["name"]: u for u in jctl(hare, "list", "users")}
    assert users["ctl-app"]["tags"] == ["management"]
    assert users["ctl-app"]["limits"] == {"max-channels": 5}
    ctl(hare, "change-password", "ctl-app", "pw2")
    ctl(hare, "set-user-tags", "ctl-app", "monitoring")
    assert jctl(hare, "list", "users") and ctl(hare, "overview", user="ctl-app", password="pw2").returncode == 0
    assert ctl(hare, "overview", user="ctl-app", password="pw1", check=False).returncode != 0
    perms = [p for p in jctl(hare, "list", "permissions") if p["user"] == "ctl-app"]
    assert perms == [{"user": "ctl-app", "vhost": "ctl-vh", "configure": "^ctl-", "write": "^ctl-", "read": "^ctl-"}]
    ctl(hare, "-V", "ctl-vh", "clear-permissions", "ctl-app")
    ctl(hare, "delete-vhost", "ctl-vh")
    ctl(hare, "delete-user", "ctl-app")
    assert "ctl-app" not in {u["name"] for u in jctl(hare, "list", "users")}
    out = ctl(hare, "delete-user", "ctl-app", check=False)
    assert out.returncode != 0 and "404" in out.stderr + out.stdout
