"""The management API through the tools built for RabbitMQ's: rabbitmqadmin (the script
Debian's rabbitmq-server package ships), pyrabbit2 and the Prometheus text parser; and the
statistics they read: message rates, channels, consumers, latency distributions, the backlog
forecast, pagination, sorting and columns."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyrabbit2.api import Client

from conftest import module_hare, wait_for
from test_management_api import api

RABBITMQADMIN_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/priv/www/cli/rabbitmqadmin"


# Rates sampled every 200 ms instead of 5 s, so tests see them within a second.
hare = module_hare("--stats-interval", "200")


@pytest.fixture(scope="module")
def rabbitmqadmin():
    """The rabbitmqadmin script: from an installed rabbitmq-server, or extracted from the
    Debian package without installing it."""
    found = sorted(glob.glob(RABBITMQADMIN_GLOB))
    if found:
        return found[-1]
    work = tempfile.mkdtemp(prefix="rabbitmqadmin-")
    subprocess.run(["apt-get", "download", "rabbitmq-server"], cwd=work, check=True, capture_output=True, timeout=300)
    deb = glob.glob(os.path.join(work, "rabbitmq-server_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(work, "root")], check=True, timeout=300)
    return sorted(glob.glob(os.path.join(work, "root") + RABBITMQADMIN_GLOB))[-1]


def admin(hare, script, *args):
    out = subprocess.run(
        [sys.executable, script, "-H", "127.0.0.1", "-P", str(hare.http_port), "-u", "guest", "-p", "guest", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_rabbitmqadmin_declares_lists_publishes_gets_and_exports(hare, rabbitmqadmin):
    admin(hare, rabbitmqadmin, "declare", "queue", "name=adm-q", "durable=true")
    admin(hare, rabbitmqadmin, "declare", "exchange", "name=adm-x", "type=fanout")
    admin(hare, rabbitmqadmin, "declare", "binding", "source=adm-x", "destination=adm-q")
    assert "Message published" in admin(hare, rabbitmqadmin, "publish", "exchange=adm-x", "routing_key=k", "payload=hello")
    queues = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "queues", "name", "messages"))
    assert {"name": "adm-q", "messages": 1} in queues
    bindings = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "bindings", "source", "destination"))
    assert {"source": "adm-x", "destination": "adm-q"} in bindings
    got = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "get", "queue=adm-q", "ackmode=ack_requeue_false"))
    assert got[0]["payload"] == "hello" and got[0]["exchange"] == "adm-x"
    c = hare.connect()
    ch = c.channel()
    ch.basic_consume("adm-q", lambda *a: None, consumer_tag="adm-consumer")
    try:
        conns = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "connections", "name", "user"))
        assert any(x["user"] == "guest" for x in conns)
        chans = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "channels", "name", "consumer_count"))
        assert any(x["consumer_count"] == 1 for x in chans)
        consumers = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "consumers"))
        assert any(x["consumer_tag"] == "adm-consumer" and x["queue"]["name"] == "adm-q" for x in consumers)
    finally:
        c.close()
    nodes = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "nodes", "name", "fd_used", "fd_total"))
    assert nodes[0]["name"] == "hare@localhost" and 0 < nodes[0]["fd_used"] < nodes[0]["fd_total"]
    overview = admin(hare, rabbitmqadmin, "show", "overview")
    assert "3.10.8" in overview
    path = os.path.join(tempfile.mkdtemp(), "defs.json")
    admin(hare, rabbitmqadmin, "export", path)
    with open(path) as f:
        defs = json.load(f)
    assert any(q["name"] == "adm-q" for q in defs["queues"])
    admin(hare, rabbitmqadmin, "delete", "queue", "name=adm-q")
    queues = json.loads(admin(hare, rabbitmqadmin, "-f", "raw_json", "list", "queues", "name"))
    assert {"name": "adm-q"} not in queues


def test_pyrabbit2_manages_queues_and_reads_the_broker(hare):
    c = Client(f"127.0.0.1:{hare.http_port}", "guest", "guest")
    assert c.is_alive()
    c.create_queue("/", "py-q", durable=False)
    c.create_exchange("/", "py-x", "direct")
    c.create_binding("/", "py-x", "py-q", "rk")
    assert c.publish("/", "py-x", "rk", "hi")
    assert c.get_queue_depth("/", "py-q") == 1
    msgs = c.get_messages("/", "py-q", count=1, requeue=False)
    assert msgs[0]["payload"] == "hi" and msgs[0]["routing_key"] == "rk"
    assert any(b["source"] == "py-x" and b["destination"] == "py-q" for b in c.get_bindings())
    assert c.get_nodes()[0]["name"] == "hare@localhost"
    assert [u["name"] for u in c.get_users()] == ["guest"]
    assert c.get_vhost_names() == ["/"]
    c.delete_queue("/", "py-q")
    assert "py-q" not in [q["name"] for q in c.get_queues()]


def test_rates_channels_consumers_and_latency(hare):
    pub = hare.connect()
    pch = pub.channel()
    pch.confirm_delivery()
    pch.queue_declare("rates-q")
    sub = hare.connect()
    sch = sub.channel()
    sch.basic_qos(prefetch_count=20)
    sch.basic_consume("rates-q", lambda ch, m, p, b: ch.basic_ack(m.delivery_tag), consumer_tag="rates-c")
    try:
        # Publish for a little over a second, so at least two samples see a rate.
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < 1.2 and sent < 100_000:
            for _ in range(50):
                pch.basic_publish("", "rates-q", b"x" * 100)
                sent += 1
            sub.process_data_events(time_limit=0)
        stats = {}

        def rated():
            sub.process_data_events(time_limit=0)
            _, q = api(hare, "/api/queues/%2F/rates-q")
            stats.update(q)
            ms = q.get("message_stats", {})
            return ms.get("publish") == sent and ms.get("ack") == sent and q["time_to_ack_us"]["count"] > 0

        wait_for(rated, timeout=20, what="every message published, delivered and acked in the queue's stats")
        ms = stats["message_stats"]
        assert ms["deliver"] == sent and ms["deliver_get"] == sent
        assert ms["publish_details"]["rate"] >= 0 and "ack_details" in ms
        # One message in 16 is stamped for the latency distributions.
        assert stats["time_in_queue_us"]["count"] >= sent // 16 - 1
        tq = stats["time_in_queue_us"]
        assert tq["p50"] <= tq["p90"] <= tq["p99"] <= tq["max"]
        assert set(stats["forecast"]) == {"rate_in", "rate_out", "time_to_empty_s", "time_to_full_s", "expected_wait_s"}
        _, overview = api(hare, "/api/overview")
        assert overview["message_stats"]["publish"] >= sent
        assert overview["message_stats"]["confirm"] >= sent
        _, channels = api(hare, "/api/channels")
        publisher = [c for c in channels if c["confirm"]]
        assert publisher and publisher[0]["message_stats"]["publish"] == sent
        assert publisher[0]["message_stats"]["confirm"] == sent
        consumer_ch = [c for c in channels if c["consumer_count"] == 1]
        assert consumer_ch and consumer_ch[0]["prefetch_count"] == 20
        status, one = api(hare, "/api/channels/" + urlquote(consumer_ch[0]["name"]))
        assert status == 200 and one["number"] == consumer_ch[0]["number"]
        _, consumers = api(hare, "/api/consumers/%2F")
        c = [x for x in consumers if x["consumer_tag"] == "rates-c"][0]
        assert c["ack_required"] is True and c["prefetch_count"] == 20 and c["queue"] == {"name": "rates-q", "vhost": "/"}
    finally:
        pub.close()
        sub.close()


def urlquote(s):
    import urllib.parse

    return urllib.parse.quote(s, safe="")


def test_forecast_of_a_bounded_queue_filling_up(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("fill-q", arguments={"x-max-length": 1_000_000})
    found = {}

    def filling():
        for _ in range(200):
            ch.basic_publish("", "fill-q", b"y")
        _, q = api(hare, "/api/queues/%2F/fill-q")
        found.update(q["forecast"])
        return q["forecast"]["time_to_full_s"] is not None

    try:
        wait_for(filling, timeout=20, interval=0.05, what="a time to full for a queue that only grows")
        assert found["rate_in"] > 0 and found["rate_out"] == 0
        assert found["time_to_empty_s"] is None and found["expected_wait_s"] is None
        assert found["time_to_full_s"] > 0
    finally:
        ch.queue_delete("fill-q")
        c.close()


def test_pagination_sorting_and_columns_as_rabbitmq(hare):
    c = hare.connect()
    ch = c.channel()
    for i in range(25):
        ch.queue_declare(f"page-{i:02d}")
    try:
        status, page = api(hare, "/api/queues/%2F?page=2&page_size=10&name=page-&sort=name")
        assert status == 200
        assert page["page"] == 2 and page["page_size"] == 10 and page["page_count"] == 3
        assert page["filtered_count"] == 25 and page["item_count"] == 10
        assert page["total_count"] >= 25
        assert [q["name"] for q in page["items"]] == [f"page-{i:02d}" for i in range(10, 20)]
        _, page = api(hare, "/api/queues/%2F?page=1&name=%5Epage-0%5B0-4%5D%24&use_regex=true")
        assert sorted(q["name"] for q in page["items"]) == [f"page-0{i}" for i in range(5)]
        _, listed = api(hare, "/api/queues/%2F?sort=name&sort_reverse=true&columns=name,message_stats.publish")
        names = [q["name"] for q in listed]
        assert names == sorted(names, reverse=True)
        assert all(set(q) <= {"name", "message_stats"} for q in listed)
        status, body = api(hare, "/api/queues?page=99")
        assert status == 400 and body == {"error": "bad_request", "reason": "Page out of range"}
        status, body = api(hare, "/api/queues?page=1&page_size=100000")
        assert status == 400 and body["error"] == "bad_request"
    finally:
        for i in range(25):
            ch.queue_delete(f"page-{i:02d}")
        c.close()


def test_prometheus_metrics_parse_with_rabbitmqs_names(hare):
    import urllib.request

    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("prom-q")
    for _ in range(5):
        ch.basic_publish("", "prom-q", b"z")
    try:
        # Served without a login, as RabbitMQ's Prometheus endpoint is.
        def scrape(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{hare.http_port}{path}", timeout=10) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return {f.name: f for f in text_string_to_metric_families(r.read().decode())}

        def ready_in_prom_q():
            fams = scrape("/metrics/per-object")
            samples = fams["rabbitmq_queue_messages_ready"].samples
            return [s for s in samples if s.labels == {"vhost": "/", "queue": "prom-q"} and s.value == 5]

        wait_for(ready_in_prom_q, what="prom-q with 5 ready messages in the per-object metrics")
        fams = scrape("/metrics")
        for name in [
            "rabbitmq_connections",
            "rabbitmq_channels",
            "rabbitmq_queues",
            "rabbitmq_queue_messages_ready",
            "rabbitmq_queue_messages_unacked",
            "rabbitmq_process_open_fds",
            "rabbitmq_process_resident_memory_bytes",
            "hare_queue_time_in_queue_seconds",
        ]:
            assert fams[name].type == "gauge", name
        # The parser names counter families without their _total suffix.
        for name in ["rabbitmq_channel_messages_published", "rabbitmq_global_messages_received", "rabbitmq_connections_opened"]:
            assert fams[name].type == "counter", name
        assert fams["rabbitmq_channel_messages_published"].samples[0].value >= 5
        assert fams["rabbitmq_queue_messages_ready"].samples[0].value >= 5
        assert fams["rabbitmq_connections"].samples[0].value >= 1
    finally:
        ch.queue_delete("prom-q")
        c.close()
