"""Every reply code a pika client can provoke, with RabbitMQ's code and a text naming the problem.
Codes that need malformed frames (501, 502, 504, 505) are covered by the raw-socket tests."""
import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAuthenticationError,
)

from conftest import wait_for


def channel_error(hare, action):
    c = hare.connect()
    try:
        with pytest.raises(ChannelClosedByBroker) as e:
            action(c.channel())
        # The connection survives a channel error.
        assert c.is_open
        c.channel().queue_declare("", exclusive=True)
        return e.value.reply_code, e.value.reply_text
    finally:
        if c.is_open:
            c.close()


def connection_error(hare, action):
    c = hare.connect()
    with pytest.raises(ConnectionClosedByBroker) as e:
        action(c)
        # Some methods are asynchronous in pika: wait for the close to arrive.
        wait_for(lambda: c.process_data_events(time_limit=0.01) or not c.is_open, what="connection.close")
    return e.value.reply_code, e.value.reply_text


def test_404_not_found(hare):
    code, text = channel_error(hare, lambda ch: ch.queue_declare("missing_q", passive=True))
    assert (code, text) == (404, "NOT_FOUND - no queue 'missing_q' in vhost '/'")
    code, text = channel_error(hare, lambda ch: ch.exchange_declare("missing_x", passive=True))
    assert (code, text) == (404, "NOT_FOUND - no exchange 'missing_x' in vhost '/'")

    def publish_then_sync(ch):
        ch.basic_publish("missing_x", "k", b"x")
        ch.queue_declare("", exclusive=True)

    code, text = channel_error(hare, publish_then_sync)
    assert (code, text) == (404, "NOT_FOUND - no exchange 'missing_x' in vhost '/'")
    code, _ = channel_error(hare, lambda ch: ch.basic_consume("missing_q", lambda *a: None))
    assert code == 404
    code, _ = channel_error(hare, lambda ch: ch.queue_bind("missing_q", "amq.direct"))
    assert code == 404


def test_403_access_refused(hare):
    code, text = channel_error(hare, lambda ch: ch.queue_declare("amq.mine"))
    assert (code, text) == (403, "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'")
    code, text = channel_error(hare, lambda ch: ch.exchange_declare("amq.mine", "direct"))
    assert code == 403 and "reserved prefix" in text
    code, text = channel_error(hare, lambda ch: ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue, ""))
    assert code == 403 and "default exchange" in text
    code, _ = channel_error(hare, lambda ch: ch.exchange_delete("amq.direct"))
    assert code == 403

    def internal(ch):
        ch.exchange_declare("internal_x", "fanout", internal=True)
        ch.basic_publish("internal_x", "", b"x")
        ch.queue_declare("", exclusive=True)

    code, text = channel_error(hare, internal)
    assert code == 403 and "internal exchange 'internal_x'" in text

    def exclusive_consumer(ch):
        ch.queue_declare("excl_consumer_q", auto_delete=True)
        ch.basic_consume("excl_consumer_q", lambda *a: None, exclusive=True)
        ch.basic_consume("excl_consumer_q", lambda *a: None)

    code, text = channel_error(hare, exclusive_consumer)
    assert code == 403 and "in exclusive use" in text


def test_403_login_refused(hare):
    bad = pika.ConnectionParameters(
        host="127.0.0.1", port=hare.port, credentials=pika.PlainCredentials("guest", "wrong")
    )
    with pytest.raises(ProbableAuthenticationError) as e:
        pika.BlockingConnection(bad)
    assert "ACCESS_REFUSED" in str(e.value)
    unknown = pika.ConnectionParameters(
        host="127.0.0.1", port=hare.port, credentials=pika.PlainCredentials("nobody", "guest")
    )
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(unknown)


def test_405_resource_locked(hare):
    owner = hare.connect()
    owner.channel().queue_declare("locked_q", exclusive=True)
    code, text = channel_error(hare, lambda ch: ch.queue_declare("locked_q", passive=True))
    assert code == 405 and "exclusive access to locked queue 'locked_q'" in text
    owner.close()


def test_406_precondition_failed(hare):
    def redeclare(ch):
        ch.queue_declare("durable_q", durable=True)
        ch.queue_declare("durable_q", durable=False)

    code, text = channel_error(hare, redeclare)
    assert code == 406
    assert text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'durable_q' in vhost '/': "
        "received 'false' but current is 'true'"
    )

    def redeclare_args(ch):
        ch.queue_declare("ttl_q", arguments={"x-message-ttl": 1000})
        ch.queue_declare("ttl_q", arguments={"x-message-ttl": 2000})

    code, text = channel_error(hare, redeclare_args)
    assert code == 406 and "x-message-ttl" in text

    def exchange_type(ch):
        ch.exchange_declare("typed_x", "direct")
        ch.exchange_declare("typed_x", "fanout")

    code, text = channel_error(hare, exchange_type)
    assert code == 406 and "inequivalent arg 'type'" in text

    def unknown_tag(ch):
        ch.basic_ack(999)
        ch.queue_declare("", exclusive=True)

    code, text = channel_error(hare, unknown_tag)
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 999")

    def confirm_then_tx(ch):
        ch.confirm_delivery()
        ch.tx_select()

    code, _ = channel_error(hare, confirm_then_tx)
    assert code == 406


def test_530_not_allowed(hare):
    with pytest.raises((ConnectionClosedByBroker, pika.exceptions.ProbableAccessDeniedError)) as e:
        pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=hare.port, virtual_host="nope"))
    assert "530" in str(e.value) and "NOT_ALLOWED - vhost 'nope' not found" in str(e.value)



def test_503_command_invalid(hare):
    code, text = connection_error(hare, lambda c: c.channel().exchange_declare("weird", "x-no-such-type"))
    assert (code, text) == (503, "COMMAND_INVALID - unknown exchange type 'x-no-such-type'")


def test_540_not_implemented(hare):
    code, text = connection_error(hare, lambda c: c.channel().basic_qos(prefetch_size=10))
    assert code == 540 and "prefetch_size" in text


def test_other_connections_unaffected(hare):
    healthy = hare.connect()
    ch = healthy.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    connection_error(hare, lambda c: c.channel().exchange_declare("weird2", "bogus"))
    ch.basic_publish("", q, b"still here")
    assert ch.basic_get(q, auto_ack=True)[2] == b"still here"
    healthy.close()


def test_sigterm_closes_connections_with_320_and_exits_0(fresh_hare):
    c = fresh_hare.connect()
    fresh_hare.proc.send_signal(__import__("signal").SIGTERM)
    with pytest.raises(ConnectionClosedByBroker) as e:
        wait_for(lambda: c.process_data_events(time_limit=0.05) or not c.is_open, what="connection.close")
    assert e.value.reply_code == 320
    assert "CONNECTION_FORCED" in e.value.reply_text
    assert fresh_hare.proc.wait(timeout=10) == 0
    assert fresh_hare.stop() == 0
