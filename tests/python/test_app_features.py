"""TTL, queue expiry, dead-lettering with x-death, length limits, priorities, delivery limits,
single active consumer, consumer priorities and argument checking, through pika."""
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, NackError

from conftest import wait_for
from helpers import bodies, drain


def count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def get_all(ch, q):
    out = []
    while True:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def dlx_pair(ch, name, **queue_args):
    """A queue `name` dead-lettering through a fanout exchange into `name`.dead."""
    ch.exchange_declare(f"{name}.dlx", "fanout")
    ch.queue_declare(f"{name}.dead")
    ch.queue_purge(f"{name}.dead")
    ch.queue_bind(f"{name}.dead", f"{name}.dlx")
    args = {"x-dead-letter-exchange": f"{name}.dlx", **queue_args}
    ch.queue_declare(name, arguments=args)
    return f"{name}.dead"


# --- TTL and expiry -----------------------------------------------------------------------


def test_queue_ttl_expires_messages_without_a_consumer(ch):
    ch.queue_declare("ttl_q", arguments={"x-message-ttl": 150})
    for i in range(50):
        ch.basic_publish("", "ttl_q", f"m{i}".encode())
    assert count(ch, "ttl_q") == 50
    wait_for(lambda: count(ch, "ttl_q") == 0, timeout=5, what="messages to expire")
    assert ch.basic_get("ttl_q") == (None, None, None)


def test_per_message_expiration_is_dead_lettered_with_original_expiration(ch):
    dead = dlx_pair(ch, "exp_q")
    ch.basic_publish("", "exp_q", b"short", pika.BasicProperties(expiration="100"))
    wait_for(lambda: count(ch, dead) == 1, timeout=5, what="the dead letter")
    method, props, body = ch.basic_get(dead, auto_ack=True)
    assert body == b"short"
    assert props.expiration is None
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"] == "exp_q" and death["count"] == 1
    assert death["original-expiration"] == "100"
    assert death["routing-keys"] == ["exp_q"] and death["exchange"] == ""
    assert props.headers["x-first-death-reason"] == "expired"
    assert method.exchange == "exp_q.dlx"


def test_ttl_zero_reaches_a_waiting_consumer_and_is_dropped_otherwise(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("ttl0", arguments={"x-message-ttl": 0})
    ch.basic_publish("", "ttl0", b"nobody")
    assert count(ch, "ttl0") == 0
    got = []
    ch.basic_consume("ttl0", lambda c_, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", "ttl0", b"someone")
    wait_for(lambda: c.process_data_events(time_limit=0.05) or got, timeout=5, what="the delivery")
    assert got == [b"someone"]
    c.close()


def test_invalid_expiration_property_is_refused(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("badexp")
    ch.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_publish("", "badexp", b"x", pika.BasicProperties(expiration="soon"))
    assert e.value.reply_code == 406 and "invalid expiration" in e.value.reply_text
    c.close()


def test_unused_queue_expires(ch):
    ch.queue_declare("idle_q", arguments={"x-expires": 200})

    def gone():
        try:
            probe = ch.connection.channel()
            probe.queue_declare("idle_q", passive=True)
            probe.close()
            return False
        except ChannelClosedByBroker as e:
            return e.reply_code == 404

    wait_for(gone, timeout=5, what="the queue to expire")


def test_queue_with_a_consumer_does_not_expire(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("busy_q", arguments={"x-expires": 100})
    ch.basic_consume("busy_q", lambda *a: None)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        c.process_data_events(time_limit=0.05)
    assert ch.queue_declare("busy_q", passive=True).method.consumer_count == 1
    c.close()


# --- dead-lettering ------------------------------------------------------------------------


def test_rejected_messages_are_dead_lettered_with_routing_key(ch):
    ch.exchange_declare("rej.dlx", "direct")
    ch.queue_declare("rej.dead")
    ch.queue_bind("rej.dead", "rej.dlx", routing_key="failed")
    ch.queue_declare("rej_q", arguments={"x-dead-letter-exchange": "rej.dlx", "x-dead-letter-routing-key": "failed"})
    ch.basic_publish("", "rej_q", b"bad", pika.BasicProperties(headers={"keep": "me"}))
    method, _, _ = ch.basic_get("rej_q")
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_publish("", "rej_q", b"worse")
    method, _, _ = ch.basic_get("rej_q")
    ch.basic_nack(method.delivery_tag, requeue=False)
    got = drain(ch, "rej.dead", 2, timeout=5)
    assert bodies(got) == [b"bad", b"worse"]
    method, props, _ = got[0]
    assert method.routing_key == "failed"
    assert props.headers["keep"] == "me"
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected" and death["routing-keys"] == ["rej_q"]
    assert "original-expiration" not in death


def retry_loop(ch, name, ttl):
    """A retry loop: `name`_work rejects into `name`_wait, whose TTL sends messages back."""
    ch.exchange_declare(f"{name}.work", "fanout")
    ch.exchange_declare(f"{name}.wait", "fanout")
    ch.queue_declare(f"{name}_work", arguments={"x-dead-letter-exchange": f"{name}.wait"})
    ch.queue_declare(f"{name}_wait", arguments={"x-dead-letter-exchange": f"{name}.work", "x-message-ttl": ttl})
    ch.queue_bind(f"{name}_work", f"{name}.work")
    ch.queue_bind(f"{name}_wait", f"{name}.wait")
    return f"{name}.work", f"{name}_work"


def next_message(ch, queue):
    """Waits for a message in `queue` and takes it (unacked): (method, properties, body)."""
    return wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(queue)), timeout=5, what=f"a message in {queue}")


def test_x_death_keeps_history_most_recent_first(ch):
    exchange, work = retry_loop(ch, "retry", 50)
    ch.basic_publish(exchange, "", b"job")
    method, props, _ = next_message(ch, work)
    assert props.headers is None or "x-death" not in props.headers
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _ = next_message(ch, work)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"]) for d in deaths] == [("retry_wait", "expired"), ("retry_work", "rejected")]
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-last-death-reason"] == "expired"
    ch.basic_ack(method.delivery_tag)


def test_x_death_count_increments(ch):
    exchange, work = retry_loop(ch, "cnt", 20)
    ch.basic_publish(exchange, "", b"job")
    for _ in range(3):
        method, _, _ = next_message(ch, work)
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _ = next_message(ch, work)
    ch.basic_ack(method.delivery_tag)
    counts = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
    assert counts == {("cnt_work", "rejected"): 3, ("cnt_wait", "expired"): 3}
    assert props.headers["x-first-death-queue"] == "cnt_work"


def test_automatic_dead_letter_cycle_is_dropped(ch):
    # A queue whose expired messages dead-letter back into itself: dropped after one round.
    ch.exchange_declare("cycle.x", "fanout")
    ch.queue_declare("cycle_q", arguments={"x-dead-letter-exchange": "cycle.x", "x-message-ttl": 30})
    ch.queue_bind("cycle_q", "cycle.x")
    ch.basic_publish("", "cycle_q", b"round")
    wait_for(lambda: count(ch, "cycle_q") == 0, timeout=5, what="the message to leave")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert count(ch, "cycle_q") == 0
        time.sleep(0.02)


# --- length limits -------------------------------------------------------------------------


def test_max_length_drop_head_dead_letters_the_oldest(ch):
    dead = dlx_pair(ch, "maxlen_q", **{"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", "maxlen_q", f"m{i}".encode())
    assert bodies(get_all(ch, "maxlen_q")) == [b"m3", b"m4"]
    got = get_all(ch, dead)
    assert bodies(got) == [b"m0", b"m1", b"m2"]
    assert got[0][1].headers["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes(ch):
    ch.queue_declare("maxbytes_q", arguments={"x-max-length-bytes": 10})
    for i in range(4):
        ch.basic_publish("", "maxbytes_q", b"abcd" + str(i).encode())
    assert bodies(get_all(ch, "maxbytes_q")) == [b"abcd2", b"abcd3"]


def test_reject_publish_nacks_confirming_publishers(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("full_q", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", "full_q", b"1")
    ch.basic_publish("", "full_q", b"2")
    with pytest.raises(NackError):
        ch.basic_publish("", "full_q", b"3")
    assert bodies(get_all(ch, "full_q")) == [b"1", b"2"]
    ch.basic_publish("", "full_q", b"4")
    assert bodies(get_all(ch, "full_q")) == [b"4"]
    c.close()


def test_reject_publish_dlx_dead_letters_the_refused(ch):
    dead = dlx_pair(ch, "rpdlx_q", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.basic_publish("", "rpdlx_q", b"kept")
    ch.basic_publish("", "rpdlx_q", b"refused")
    assert bodies(get_all(ch, "rpdlx_q")) == [b"kept"]
    got = get_all(ch, dead)
    assert bodies(got) == [b"refused"] and got[0][1].headers["x-death"][0]["reason"] == "maxlen"


def test_limits_hit_by_a_transaction(ch):
    ch.queue_declare("tx_limit_drop", arguments={"x-max-length": 2})
    ch.queue_declare("tx_limit_reject", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.tx_select()
    for i in range(5):
        ch.basic_publish("", "tx_limit_drop", str(i).encode())
        ch.basic_publish("", "tx_limit_reject", str(i).encode())
    assert count(ch, "tx_limit_drop") == 0
    ch.tx_commit()
    assert bodies(get_all(ch, "tx_limit_drop")) == [b"3", b"4"]
    assert bodies(get_all(ch, "tx_limit_reject")) == [b"0", b"1"]
    ch.tx_commit()


# --- priorities and delivery limits ----------------------------------------------------------


def test_priority_queue_delivers_highest_first_fifo_within(ch):
    ch.queue_declare("prio_q", arguments={"x-max-priority": 5})
    publish = [(1, "a"), (5, "b"), (3, "c"), (5, "d"), (0, "e"), (9, "f"), (None, "g")]
    for prio, body in publish:
        ch.basic_publish("", "prio_q", body.encode(), pika.BasicProperties(priority=prio))
    # 9 counts as the maximum, 5; no priority counts as 0.
    assert bodies(get_all(ch, "prio_q")) == [b"b", b"d", b"f", b"c", b"a", b"e", b"g"]


def test_priority_queue_requeue_keeps_priority_order(ch):
    ch.queue_declare("prio_rq", arguments={"x-max-priority": 2})
    ch.basic_publish("", "prio_rq", b"low", pika.BasicProperties(priority=0))
    ch.basic_publish("", "prio_rq", b"high", pika.BasicProperties(priority=2))
    method, _, body = ch.basic_get("prio_rq")
    assert body == b"high"
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert bodies(get_all(ch, "prio_rq")) == [b"high", b"low"]


def test_delivery_limit_dead_letters_a_poison_message(ch):
    dead = dlx_pair(ch, "poison_q", **{"x-delivery-limit": 1, "x-queue-type": "quorum"})
    ch.basic_publish("", "poison_q", b"poison")
    method, props, _ = ch.basic_get("poison_q")
    assert not (props.headers or {}).get("x-delivery-count")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, _ = ch.basic_get("poison_q")
    assert method.redelivered and props.headers["x-delivery-count"] == 1
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert ch.basic_get("poison_q") == (None, None, None)
    got = get_all(ch, dead)
    assert bodies(got) == [b"poison"]
    assert got[0][1].headers["x-death"][0]["reason"] == "delivery_limit"


def test_delivery_limit_without_dlx_drops(ch):
    ch.queue_declare("poison_drop", arguments={"x-delivery-limit": 0})
    ch.basic_publish("", "poison_drop", b"once")
    method, _, _ = ch.basic_get("poison_drop")
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert ch.basic_get("poison_drop") == (None, None, None)


# --- consumers -----------------------------------------------------------------------------


def test_single_active_consumer_fails_over(hare):
    c1, c2 = hare.connect(), hare.connect()
    ch1, ch2 = c1.channel(), c2.channel()
    ch1.queue_declare("sac_q", arguments={"x-single-active-consumer": True})
    got1, got2 = [], []
    ch1.basic_consume("sac_q", lambda c, m, p, b: got1.append(b), auto_ack=True)
    ch2.basic_consume("sac_q", lambda c, m, p, b: got2.append(b), auto_ack=True)
    for i in range(10):
        ch1.basic_publish("", "sac_q", str(i).encode())

    def pump():
        c1.process_data_events(time_limit=0.02)
        c2.process_data_events(time_limit=0.02)

    wait_for(lambda: pump() or len(got1) == 10, timeout=5, what="the active consumer")
    assert got2 == []
    c1.close()
    for i in range(10, 15):
        ch2.basic_publish("", "sac_q", str(i).encode())
    wait_for(lambda: c2.process_data_events(time_limit=0.02) or len(got2) == 5, timeout=5, what="fail-over")
    assert got2 == [str(i).encode() for i in range(10, 15)]
    c2.close()


def test_consumer_priorities(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("cprio_q")
    ch.basic_qos(prefetch_count=2)
    low, high = [], []
    ch.basic_consume("cprio_q", lambda c_, m, p, b: low.append(m.delivery_tag), arguments={"x-priority": 1})
    ch.basic_consume("cprio_q", lambda c_, m, p, b: high.append(m.delivery_tag), arguments={"x-priority": 10})
    for i in range(3):
        ch.basic_publish("", "cprio_q", str(i).encode())
    # The high-priority consumer takes what its prefetch allows; the rest goes to the low one.
    wait_for(lambda: c.process_data_events(time_limit=0.02) or len(high) + len(low) == 3, what="deliveries")
    assert len(high) == 2 and len(low) == 1
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_consume("cprio_q", lambda *a: None, arguments={"x-priority": "high"})
    assert e.value.reply_code == 406 and "x-priority" in e.value.reply_text
    c.close()


def test_exclusive_consumer_refuses_others(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("excl_cons_q")
    ch.basic_consume("excl_cons_q", lambda *a: None, exclusive=True)
    other = c.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        other.basic_consume("excl_cons_q", lambda *a: None)
    assert e.value.reply_code == 403
    c.close()


# --- argument checking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, text",
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue 'argq' in vhost '/': {value_negative,-1}"),
        ({"x-message-ttl": "1000"}, "invalid arg 'x-message-ttl' for queue 'argq' in vhost '/': \"expected integer, got longstr\""),
        ({"x-expires": 0}, "invalid arg 'x-expires' for queue 'argq' in vhost '/': {value_zero,0}"),
        ({"x-max-length": -3}, "invalid arg 'x-max-length' for queue 'argq' in vhost '/': {value_negative,-3}"),
        ({"x-max-priority": 256}, "invalid arg 'x-max-priority' for queue 'argq' in vhost '/': {max_value_exceeded,256}"),
        ({"x-overflow": "drop-tail"}, "invalid arg 'x-overflow' for queue 'argq' in vhost '/': invalid_overflow"),
        ({"x-dead-letter-routing-key": "k"}, "routing_key_but_no_dlx_defined"),
        ({"x-single-active-consumer": 1}, "{unacceptable_type,"),
    ],
)
def test_invalid_arguments_get_406_naming_the_argument(hare, args, text):
    c = hare.connect()
    ch = c.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("argq", arguments=args)
    assert e.value.reply_code == 406
    assert text in e.value.reply_text
    c.close()


def test_unknown_arguments_are_kept_and_ignored(ch):
    ch.queue_declare("unknown_args_q", arguments={"x-made-up": "yes", "x-queue-mode": "lazy"})
    ch.basic_publish("", "unknown_args_q", b"fine")
    assert bodies(get_all(ch, "unknown_args_q")) == [b"fine"]
