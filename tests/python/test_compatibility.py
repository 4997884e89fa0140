"""Behaviours where Hare must answer as RabbitMQ 3.x does, found by running the same
operations against both (tests/conformance): one test per case, asserting RabbitMQ's reply
code and exact text."""
import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from conftest import wait_for


def refused(ch_factory, action):
    """Runs `action` on a fresh channel; returns the (code, text) that closed it."""
    ch = ch_factory()
    with pytest.raises(ChannelClosedByBroker) as e:
        action(ch)
        ch.exchange_declare("amq.direct", passive=True)  # a round trip for async methods
    return e.value.reply_code, e.value.reply_text


@pytest.fixture
def new_ch(conn):
    return conn.channel


def test_bind_with_empty_routing_key_binds_with_the_empty_key(ch):
    ch.queue_declare("compat_empty_key")
    ch.exchange_declare("compat_empty_key_x", "direct")
    ch.queue_bind("compat_empty_key", "compat_empty_key_x", routing_key="")
    ch.basic_publish("compat_empty_key_x", "", b"by empty key")
    ch.basic_publish("compat_empty_key_x", "compat_empty_key", b"by queue name")
    _, _, body = ch.basic_get("compat_empty_key", auto_ack=True)
    assert body == b"by empty key"
    assert ch.basic_get("compat_empty_key", auto_ack=True) == (None, None, None)
    # Unbinding with the empty key removes that binding, not one keyed by the queue's name.
    ch.queue_unbind("compat_empty_key", "compat_empty_key_x", routing_key="")
    ch.basic_publish("compat_empty_key_x", "", b"gone")
    assert ch.queue_declare("compat_empty_key", passive=True).method.message_count == 0
    ch.queue_delete("compat_empty_key")
    ch.exchange_delete("compat_empty_key_x")


def test_empty_queue_and_key_use_the_last_declared_queue(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.exchange_declare("compat_shortcut_x", "direct")
    ch.queue_bind("", "compat_shortcut_x", routing_key="")
    ch.basic_publish("compat_shortcut_x", q, b"by name")
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"by name"
    ch.exchange_delete("compat_shortcut_x")


def test_empty_queue_name_without_a_declared_queue(new_ch):
    assert refused(new_ch, lambda ch: ch.queue_bind("", "amq.direct", "k")) == (
        404,
        "NOT_FOUND - no previously declared queue",
    )
    assert refused(new_ch, lambda ch: ch.basic_get("")) == (404, "NOT_FOUND - no previously declared queue")
    # A passive declare takes the name as given.
    assert refused(new_ch, lambda ch: ch.queue_declare("", passive=True)) == (404, "NOT_FOUND - no queue '' in vhost '/'")


def test_unbind_of_missing_queue_exchange_or_binding_is_ok(ch):
    ch.queue_declare("compat_unbind_q")
    ch.exchange_declare("compat_unbind_x", "direct")
    ch.queue_unbind("compat_unbind_q", "compat_unbind_x", routing_key="never bound")
    ch.queue_unbind("compat_no_such_queue", "compat_unbind_x", routing_key="k")
    ch.queue_unbind("compat_unbind_q", "compat_no_such_exchange", routing_key="k")
    ch.exchange_unbind("compat_no_such_exchange", "compat_unbind_x", routing_key="k")
    ch.exchange_unbind("compat_unbind_x", "compat_no_such_exchange", routing_key="k")
    ch.queue_delete("compat_unbind_q")
    ch.queue_unbind("compat_unbind_q", "compat_unbind_x", routing_key="k")
    assert ch.is_open
    ch.exchange_delete("compat_unbind_x")


def test_bind_with_both_ends_missing_names_the_source(new_ch):
    assert refused(new_ch, lambda ch: ch.queue_bind("compat_nq", "compat_nx", "k")) == (
        404,
        "NOT_FOUND - no exchange 'compat_nx' in vhost '/'",
    )
    assert refused(new_ch, lambda ch: ch.exchange_bind("compat_nd", "compat_ns", "k")) == (
        404,
        "NOT_FOUND - no exchange 'compat_ns' in vhost '/'",
    )


def test_queue_type_classic_is_the_default(ch):
    ch.queue_declare("compat_type_a")
    ch.queue_declare("compat_type_a", arguments={"x-queue-type": "classic"})
    ch.queue_declare("compat_type_b", arguments={"x-queue-type": "classic"})
    ch.queue_declare("compat_type_b")
    ch.queue_delete("compat_type_a")
    ch.queue_delete("compat_type_b")


def test_inequivalent_texts_print_values_as_rabbitmq_does(conn, new_ch):
    ch = conn.channel()
    ch.queue_declare("compat_ineq", arguments={"x-max-length": 1, "x-dead-letter-exchange": "E1"})
    text = "PRECONDITION_FAILED - inequivalent arg '{}' for queue 'compat_ineq' in vhost '/': received {} but current is {}"
    assert refused(
        new_ch, lambda c: c.queue_declare("compat_ineq", arguments={"x-max-length": 2, "x-dead-letter-exchange": "E1"})
    ) == (406, text.format("x-max-length", "'2'", "'1'"))
    assert refused(
        new_ch, lambda c: c.queue_declare("compat_ineq", arguments={"x-max-length": 1, "x-dead-letter-exchange": "E2"})
    ) == (406, text.format("x-dead-letter-exchange", "'E2'", "'E1'"))
    assert refused(new_ch, lambda c: c.queue_declare("compat_ineq", arguments={"x-dead-letter-exchange": "E1"})) == (
        406,
        text.format("x-max-length", "none", "the value '1' of type 'signedint'"),
    )
    ch.queue_declare("compat_ineq_sac", arguments={"x-single-active-consumer": True})
    assert refused(new_ch, lambda c: c.queue_declare("compat_ineq_sac")) == (
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'compat_ineq_sac' "
        "in vhost '/': received none but current is the value 'true' of type 'bool'",
    )
    ch.queue_delete("compat_ineq")
    ch.queue_delete("compat_ineq_sac")


def test_exchange_redeclare_compares_the_alternate_exchange(conn, new_ch):
    ch = conn.channel()
    ch.exchange_declare("compat_ae", "direct", arguments={"alternate-exchange": "ae1"})
    text = "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'compat_ae' in vhost '/': "
    assert refused(new_ch, lambda c: c.exchange_declare("compat_ae", "direct")) == (
        406,
        text + "received none but current is the value 'ae1' of type 'longstr'",
    )
    assert refused(new_ch, lambda c: c.exchange_declare("compat_ae", "direct", arguments={"alternate-exchange": "ae2"})) == (
        406,
        text + "received 'ae2' but current is 'ae1'",
    )
    # Other arguments are not compared.
    ch.exchange_declare("compat_ae", "direct", arguments={"alternate-exchange": "ae1", "x-other": 1})
    ch.exchange_delete("compat_ae")


def test_queue_redeclare_checks_ownership_then_equivalence_then_values(hare, conn, new_ch):
    other = hare.connect()
    try:
        other.channel().queue_declare("compat_order_excl", exclusive=True)
        locked = (
            405,
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'compat_order_excl' in vhost '/'. "
            "It could be originally declared on another connection or the exclusive property value does not "
            "match that of the original declaration.",
        )
        assert refused(new_ch, lambda c: c.queue_declare("compat_order_excl", arguments={"x-message-ttl": -1})) == locked
    finally:
        other.close()
    conn.channel().queue_declare("compat_order")
    assert refused(new_ch, lambda c: c.queue_declare("compat_order", durable=True, arguments={"x-message-ttl": -1})) == (
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'compat_order' in vhost '/': "
        "received 'true' but current is 'false'",
    )
    # An exclusive redeclare of a shared queue is a 405, as in RabbitMQ.
    assert refused(new_ch, lambda c: c.queue_declare("compat_order", exclusive=True))[0] == 405
    # Values are validated only when the queue is created.
    assert refused(new_ch, lambda c: c.queue_declare("compat_order_new", arguments={"x-message-ttl": -1})) == (
        406,
        "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'compat_order_new' in vhost '/': "
        "{value_negative,-1}",
    )
    conn.channel().queue_delete("compat_order")


def test_publish_checks_the_exchange_before_the_expiration(conn, new_ch):
    bad = pika.BasicProperties(expiration="soon")
    assert refused(new_ch, lambda c: c.basic_publish("compat_missing_x", "k", b"m", bad)) == (
        404,
        "NOT_FOUND - no exchange 'compat_missing_x' in vhost '/'",
    )
    conn.channel().exchange_declare("compat_internal", "direct", internal=True)
    assert refused(new_ch, lambda c: c.basic_publish("compat_internal", "k", b"m", bad)) == (
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'compat_internal' in vhost '/'",
    )
    assert refused(new_ch, lambda c: c.basic_publish("", "k", b"m", bad)) == (
        406,
        "PRECONDITION_FAILED - invalid expiration 'soon': no_integer",
    )
    conn.channel().exchange_delete("compat_internal")


def test_publish_with_another_users_user_id_is_refused(ch, new_ch):
    ch.queue_declare("compat_uid")
    ch.basic_publish("", "compat_uid", b"mine", pika.BasicProperties(user_id="guest"))
    assert refused(new_ch, lambda c: c.basic_publish("", "compat_uid", b"m", pika.BasicProperties(user_id="bob"))) == (
        406,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    )
    assert ch.queue_declare("compat_uid", passive=True).method.message_count == 1
    ch.queue_delete("compat_uid")


def test_missing_and_system_exchanges_on_delete(ch, new_ch):
    ch.exchange_delete("compat_never_declared")
    ch.queue_delete("compat_never_declared")
    assert refused(new_ch, lambda c: c.exchange_delete("amq.direct")) == (
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    )
    assert refused(new_ch, lambda c: c.exchange_declare("", passive=True)) == (
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )


def test_queue_delete_if_empty_text_and_order(ch, new_ch):
    ch.queue_declare("compat_del")
    ch.basic_qos(prefetch_count=1)
    ch.basic_publish("", "compat_del", b"m1")
    ch.basic_publish("", "compat_del", b"m2")
    ch.basic_consume("compat_del", lambda *a: None)  # takes m1, leaves m2 ready
    # Both conditions fail: RabbitMQ names emptiness first.
    assert refused(new_ch, lambda c: c.queue_delete("compat_del", if_unused=True, if_empty=True)) == (
        406,
        "PRECONDITION_FAILED - queue 'compat_del' in vhost '/' not empty",
    )
    ch.queue_delete("compat_del")


def test_exchange_delete_if_unused_counts_bindings_from_it_only(ch):
    ch.exchange_declare("compat_src", "direct")
    ch.exchange_declare("compat_dst", "direct")
    ch.exchange_bind("compat_dst", "compat_src", "k")
    ch.exchange_delete("compat_dst", if_unused=True)
    ch.exchange_delete("compat_src", if_unused=True)
    assert ch.is_open


def test_expiration_zero_is_not_counted_once_at_the_head(ch):
    ch.queue_declare("compat_ttl0")
    ch.basic_publish("", "compat_ttl0", b"gone", pika.BasicProperties(expiration="0"))
    assert ch.queue_declare("compat_ttl0").method.message_count == 0
    ch.basic_publish("", "compat_ttl0", b"kept")
    ch.basic_publish("", "compat_ttl0", b"gone too", pika.BasicProperties(expiration="0"))
    method, _, body = ch.basic_get("compat_ttl0", auto_ack=True)
    assert body == b"kept" and method.message_count == 0
    assert ch.basic_get("compat_ttl0", auto_ack=True) == (None, None, None)
    ch.queue_delete("compat_ttl0")


def test_kombu_queue_with_empty_routing_key_receives(hare):
    import kombu
    url = f"amqp://guest:guest@127.0.0.1:{hare.port}//"
    exchange = kombu.Exchange("compat_kombu_x", type="direct")
    queue = kombu.Queue("compat_kombu_q", exchange=exchange)  # routing key ''
    with kombu.Connection(url) as c:
        producer = c.Producer()
        producer.publish({"n": 1}, exchange=exchange, routing_key="", declare=[queue], serializer="json")
        with c.SimpleQueue(queue) as sq:
            msg = sq.get(timeout=5)
            assert msg.payload == {"n": 1}
            msg.ack()
        queue(c.default_channel).delete()
        exchange(c.default_channel).delete()


def test_aio_pika_rpc_pattern_and_unbind_after_delete(hare):
    import asyncio

    import aio_pika
    from aio_pika.patterns import RPC

    async def main():
        conn = await aio_pika.connect_robust(f"amqp://guest:guest@127.0.0.1:{hare.port}/")
        async with conn:
            ch = await conn.channel()
            rpc = await RPC.create(ch)

            async def multiply(*, x, y):
                return x * y

            await rpc.register("multiply", multiply, auto_delete=True)
            assert await asyncio.wait_for(rpc.call("multiply", kwargs={"x": 6, "y": 7}), 10) == 42
            await rpc.close()
            # Unbinding after the queue is gone is fine, as in RabbitMQ.
            ex = await ch.declare_exchange("compat_aio_x", aio_pika.ExchangeType.DIRECT)
            q = await ch.declare_queue("compat_aio_q")
            await q.bind(ex, routing_key="k")
            await q.delete()
            await q.unbind(ex, routing_key="k")
            await ex.delete()
            assert not ch.is_closed

    asyncio.run(main())
