"""`hare ctl migrate` against a real RabbitMQ (Debian's package, as the conformance test runs it):
a few vhosts, users and a policy, 10 queues holding 100,000 messages with varied properties.
After the move RabbitMQ's queues are empty, Hare's hold every message exactly once, in order,
with its properties, and users log in to Hare with their RabbitMQ passwords. Then a second
batch, Hare killed with SIGKILL in the middle of its move, a rerun: nothing lost."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pika
import pytest

import helpers
from conftest import HARE_BIN, Hare, wait_for
from helpers import free_ports, get_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
pytestmark = pytest.mark.skipif(
    not os.path.exists(RABBITMQ_SERVER) or os.geteuid() != 0,
    reason="needs Debian's rabbitmq-server and root (test.sh installs it for the conformance run)",
)

QUEUES = [("/", f"orders-{i}") for i in range(5)] + [("shop", f"items-{i}") for i in range(5)]
PER_QUEUE = 10_000


def http(port, method, path, body=None, user=("guest", "guest")):
    return helpers.api(port, method, path, body, user)


@pytest.fixture(scope="module")
def rabbit():
    import compare

    amqp, dist, mgmt = free_ports(3)

    class Rabbit(compare.RabbitMQ):
        port = amqp
        node = "haremigrate@localhost"
        plugins = ("rabbitmq_management",)
        conf = (f"management.tcp.port = {mgmt}", "management.tcp.ip = 127.0.0.1")

        def __init__(self):
            self.dir = os.path.join(tempfile.gettempdir(), "hare-migrate-rabbitmq")
            self.proc = None
            self.http_port = mgmt

        def env(self):
            e = super().env()
            e["RABBITMQ_DIST_PORT"] = str(dist)
            return e

    r = Rabbit()
    r.start()
    wait_for(lambda: http(mgmt, "GET", "/api/overview")[0] == 200 if _up(mgmt) else False, timeout=120,
             what="RabbitMQ's management API")
    yield r
    r.stop()


def _up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def rabbit_conn(rabbit, vhost="/"):
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", rabbit.port, vhost))


def fill(rabbit, start, n):
    """Publishes n messages (ids start..start+n) to each queue at RabbitMQ, varied properties."""
    for vhost in ("/", "shop"):
        c = rabbit_conn(rabbit, vhost)
        ch = c.channel()
        for v, q in QUEUES:
            if v != vhost:
                continue
            for i in range(start, start + n):
                props = pika.BasicProperties(
                    delivery_mode=2, message_id=f"{q}:{i}", priority=i % 10, content_type="application/json",
                    headers={"n": i, "origin": "rabbit"}, expiration="86400000" if i % 3 == 0 else None,
                    correlation_id=f"c{i}", timestamp=1700000000 + i)
                ch.basic_publish("", q, json.dumps({"i": i}).encode(), props)
        c.close()
    for v, q in QUEUES:
        c = rabbit_conn(rabbit, v)
        wait_for(lambda: c.channel().queue_declare(q, passive=True).method.message_count >= n, timeout=120,
                 what=f"{q} filled at RabbitMQ")
        c.close()


def migrate(hare, rabbit, background=False):
    cmd = [HARE_BIN, "ctl", "--url", f"http://127.0.0.1:{hare.http_port}", "--format", "json", "migrate",
           "--from", f"http://guest:guest@127.0.0.1:{rabbit.http_port}",
           "--from-amqp", f"amqp://guest:guest@127.0.0.1:{rabbit.port}"]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def take_all(hare, vhost, queue):
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", hare.port, vhost))
    try:
        return get_all(c, queue)
    finally:
        c.close()


def test_a_running_rabbitmq_moves_to_hare_and_a_killed_move_loses_nothing(rabbit):
    # The source: two vhosts, a user with a password, a policy, queues (one a priority queue),
    # an exchange and its binding.
    assert http(rabbit.http_port, "PUT", "/api/vhosts/shop")[0] in (201, 204)
    assert http(rabbit.http_port, "PUT", "/api/users/app", {"password": "app-secret", "tags": "management"})[0] in (201, 204)
    assert http(rabbit.http_port, "PUT", "/api/permissions/shop/app",
                {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
    assert http(rabbit.http_port, "PUT", "/api/policies/shop/cap",
                {"pattern": "^items-", "definition": {"max-length": 1000000}, "apply-to": "queues"})[0] in (201, 204)
    for v, q in QUEUES:
        args = {"x-max-priority": 10} if q == "orders-0" else {}
        assert http(rabbit.http_port, "PUT", f"/api/queues/{'%2F' if v == '/' else v}/{q}",
                    {"durable": True, "arguments": args})[0] in (201, 204)
    assert http(rabbit.http_port, "PUT", "/api/exchanges/shop/catalog", {"type": "topic", "durable": True})[0] in (201, 204)
    assert http(rabbit.http_port, "POST", "/api/bindings/shop/e/catalog/q/items-0", {"routing_key": "item.#"})[0] == 201
    fill(rabbit, 0, PER_QUEUE)

    hare = Hare()
    try:
        started = time.monotonic()
        report = migrate(hare, rabbit)
        elapsed = time.monotonic() - started
        assert report["moved"] == len(QUEUES) * PER_QUEUE
        for row in report["queues"]:
            assert (row["at_source_before"], row["moved"], row["left_at_source"], row["in_hare"]) == (
                PER_QUEUE, PER_QUEUE, 0, PER_QUEUE), row
        print(f"moved {report['moved']} messages in {elapsed:.1f} s ({report['per_second']:.0f} msg/s)")
        # Every message once, in order (the priority queue: by priority, then order), with its
        # properties.
        for v, q in QUEUES:
            got = take_all(hare, v, q)
            ids = [p.message_id for p, _ in got]
            assert len(ids) == len(set(ids)) == PER_QUEUE, q
            if q != "orders-0":
                assert ids == [f"{q}:{i}" for i in range(PER_QUEUE)], q
            p, body = got[4]
            i = json.loads(body)["i"]
            assert (p.priority, p.headers, p.content_type, p.correlation_id, p.timestamp, p.delivery_mode) == (
                i % 10, {"n": i, "origin": "rabbit"}, "application/json", f"c{i}", 1700000000 + i, 2)
        # Definitions: the user logs in with its RabbitMQ password; the policy and binding came.
        c = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", hare.port, "shop", pika.PlainCredentials("app", "app-secret")))
        c.close()
        assert http(hare.http_port, "GET", "/api/policies/shop/cap")[0] == 200
        assert http(hare.http_port, "GET", "/api/bindings/shop/e/catalog/q/items-0")[1][0]["routing_key"] == "item.#"
        assert http(hare.http_port, "GET", "/api/queues/%2F/orders-0")[1]["arguments"] == {"x-max-priority": 10}

        # A second batch; Hare killed with SIGKILL in the middle of the move; a rerun.
        second = 2_000
        fill(rabbit, PER_QUEUE, second)
        proc = migrate(hare, rabbit, background=True)
        wait_for(lambda: sum(http(hare.http_port, "GET", f"/api/queues/{'%2F' if v == '/' else v}/{q}")[1]["messages"]
                             for v, q in QUEUES) > 2_000, timeout=60, what="the second move under way")
        hare.kill()
        proc.wait(timeout=60)
        hare.restart(graceful=False)
        report = migrate(hare, rabbit)
        for row in report["queues"]:
            assert row["left_at_source"] == 0, row
        lost, duplicates = 0, 0
        for v, q in QUEUES:
            ids = [p.message_id for p, _ in take_all(hare, v, q)]
            want = {f"{q}:{i}" for i in range(PER_QUEUE, PER_QUEUE + second)}
            lost += len(want - set(ids))
            duplicates += len(ids) - len(set(ids))
        print(f"after kill -9 and a rerun: lost {lost}, duplicates {duplicates}")
        assert lost == 0
    finally:
        hare.stop()
