import time


def drain(channel, queue, count, timeout=10.0, auto_ack=True):
    """Consumes until `count` messages arrived (or the deadline); returns (method, props, body) tuples."""
    got = []

    def on_message(ch, method, props, body):
        got.append((method, props, body))
        if not auto_ack:
            ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=auto_ack)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    channel.basic_cancel(tag)
    return got


def bodies(messages):
    return [body for (_, _, body) in messages]
