"""Rates over time as RabbitMQ's management API gives them: exchange `message_stats`
(publish_in, publish_out), and `samples`/`avg`/`avg_rate` in each `_details` when a request
names a range (`msg_rates_age`/`msg_rates_incr`, `lengths_age`/`lengths_incr`)."""
import pytest

from conftest import Hare, wait_for
from test_management_api import api

N = 40


@pytest.fixture(scope="module")
def hare():
    # Sampled every 100 ms, so a test waits a fraction of a second for a sample.
    h = Hare(extra_args=["--stats-interval", "100"])
    yield h
    h.stop()


def get(hare, path):
    status, body = api(hare, path)
    assert status == 200, (path, status, body)
    return body


def test_exchanges_count_messages_in_and_copies_out(hare):
    c = hare.connect()
    ch = c.channel()
    ch.exchange_declare("smp.fan", "fanout")
    for q in ("smp.a", "smp.b"):
        ch.queue_declare(q)
        ch.queue_bind(q, "smp.fan")
    ch.exchange_declare("smp.none", "direct")
    ch.confirm_delivery()
    for _ in range(N):
        ch.basic_publish("smp.fan", "", b"m")
        ch.basic_publish("smp.none", "nowhere", b"m")
        ch.basic_publish("", "smp.a", b"m")
    c.close()

    fan = get(hare, "/api/exchanges/%2F/smp.fan")["message_stats"]
    assert fan["publish_in"] == N and fan["publish_out"] == 2 * N
    assert "rate" in fan["publish_in_details"]
    # Published in, routed nowhere: no publish_out at all, as RabbitMQ leaves it out.
    none = get(hare, "/api/exchanges/%2F/smp.none")["message_stats"]
    assert none["publish_in"] == N and "publish_out" not in none
    default = get(hare, "/api/exchanges/%2F/amq.default")["message_stats"]
    assert default["publish_in"] >= N and default["publish_out"] >= N
    # A fresh exchange has nothing to show.
    c = hare.connect()
    c.channel().exchange_declare("smp.idle", "topic")
    c.close()
    assert "message_stats" not in get(hare, "/api/exchanges/%2F/smp.idle")

    # The rate comes from the sampler: wait for a sample taken while it moved, then for
    # the samples to show the count.
    def sampled():
        d = get(hare, "/api/exchanges/%2F/smp.fan?msg_rates_age=5&msg_rates_incr=1")["message_stats"]
        return d if d["publish_in_details"]["samples"][0]["sample"] == N else None

    d = wait_for(sampled, timeout=10, what="the exchange's samples")["publish_in_details"]
    assert len(d["samples"]) == 6 and "avg" in d and "avg_rate" in d


def test_queue_lengths_and_message_rates_have_samples_when_asked(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("smp.len")
    for _ in range(N):
        ch.basic_publish("", "smp.len", b"x")
    ch.basic_get("smp.len", auto_ack=True)

    path = "/api/queues/%2F/smp.len?lengths_age=10&lengths_incr=1&msg_rates_age=10&msg_rates_incr=1"

    def sampled():
        q = get(hare, path)
        s = q["messages_details"]["samples"]
        return q if s[0]["sample"] == N - 1 and q["message_stats"]["publish_details"]["samples"][0]["sample"] == N else None

    q = wait_for(sampled, timeout=10, what="samples of the queue's length and publishes")
    samples = q["messages_details"]["samples"]
    # Eleven samples, newest first, one second apart, on whole seconds.
    assert len(samples) == 11
    stamps = [s["timestamp"] for s in samples]
    assert all(t % 1000 == 0 for t in stamps)
    assert all(a - b == 1000 for a, b in zip(stamps, stamps[1:]))
    for field in ("messages_details", "messages_ready_details", "messages_unacknowledged_details"):
        assert {"rate", "samples", "avg", "avg_rate"} <= set(q[field])
    assert q["messages_ready_details"]["samples"][0]["sample"] == N - 1
    assert q["messages_unacknowledged_details"]["samples"][0]["sample"] == 0
    # avg and avg_rate as RabbitMQ works them out from the samples.
    values = [s["sample"] for s in samples]
    assert q["messages_details"]["avg"] == pytest.approx(sum(values) / len(values))
    assert q["messages_details"]["avg_rate"] == pytest.approx((values[0] - values[-1]) * 1000 / (stamps[0] - stamps[-1]))
    get_no_ack = q["message_stats"]["get_no_ack_details"]
    wait_for(lambda: get(hare, path)["message_stats"]["get_no_ack_details"]["samples"][0]["sample"] == 1,
             what="the get in the samples")
    assert "samples" in get_no_ack

    # Without a range: rates only, as RabbitMQ answers by default.
    plain = get(hare, "/api/queues/%2F/smp.len")
    assert set(plain["messages_details"]) == {"rate"}
    assert set(plain["message_stats"]["publish_details"]) == {"rate"}
    c.close()


def test_overview_and_channels_take_ranges_too(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("smp.ov")
    for _ in range(N):
        ch.basic_publish("", "smp.ov", b"x")

    def sampled():
        o = get(hare, "/api/overview?msg_rates_age=3&msg_rates_incr=1&lengths_age=3&lengths_incr=1")
        total = o["message_stats"]["publish"]
        s = o["message_stats"]["publish_details"]["samples"]
        return o if s[0]["sample"] == total and o["queue_totals"]["messages_details"]["samples"][0]["sample"] > 0 else None

    o = wait_for(sampled, timeout=10, what="the overview's samples")
    assert len(o["message_stats"]["publish_details"]["samples"]) == 4
    assert len(o["queue_totals"]["messages_ready_details"]["samples"]) == 4

    def channel_sampled():
        chans = get(hare, "/api/channels?msg_rates_age=2&msg_rates_incr=1")
        mine = [x for x in chans if x["message_stats"].get("publish") == N]
        return mine and mine[0]["message_stats"]["publish_details"]["samples"][0]["sample"] == N

    wait_for(channel_sampled, timeout=10, what="the channel's samples")
    c.close()


@pytest.mark.parametrize("query", [
    "msg_rates_age=60",
    "msg_rates_age=60&msg_rates_incr=0",
    "lengths_age=x&lengths_incr=5",
    "lengths_age=100000&lengths_incr=1",
])
def test_malformed_ranges_are_a_400(hare, query):
    status, body = api(hare, f"/api/queues?{query}")
    assert status == 400 and body["error"] == "bad_request" and body["reason"]
    status, _ = api(hare, f"/api/overview?{query}")
    assert status == 400
