"""The seed examples and the six RabbitMQ tutorials, written with pika, against Hare."""
import json
import threading
import time
import uuid

import pika

from helpers import bodies, drain


def test_seed_hello_world(hare):
    producer = hare.connect()
    pch = producer.channel()
    pch.queue_declare(queue="hello")
    pch.basic_publish(exchange="", routing_key="hello", body="Hello World!")
    producer.close()

    consumer = hare.connect()
    cch = consumer.channel()
    cch.queue_declare(queue="hello")
    assert bodies(drain(cch, "hello", 1)) == [b"Hello World!"]
    consumer.close()


def test_seed_task_queue_persistent_json(hare):
    sender = hare.connect()
    sch = sender.channel()
    sch.queue_declare(queue="task_queue", durable=True)
    message = {"type": "request", "data": "Hello, World!"}
    sch.basic_publish(
        exchange="", routing_key="task_queue", body=json.dumps(message), properties=pika.BasicProperties(delivery_mode=2)
    )
    sender.close()

    receiver = hare.connect()
    rch = receiver.channel()
    rch.queue_declare(queue="task_queue", durable=True)
    got = drain(rch, "task_queue", 1)
    assert json.loads(got[0][2]) == message
    assert got[0][1].delivery_mode == 2
    receiver.close()


def test_work_queues_fair_dispatch(hare):
    producer = hare.connect()
    pch = producer.channel()
    pch.queue_declare(queue="tut_tasks", durable=True)
    for i in range(20):
        pch.basic_publish("", "tut_tasks", f"task {i}".encode(), pika.BasicProperties(delivery_mode=2))

    workers = []
    for _ in range(2):
        c = hare.connect()
        ch = c.channel()
        ch.basic_qos(prefetch_count=1)
        seen = []

        def cb(chan, method, props, body, seen=seen):
            seen.append(body)
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume("tut_tasks", cb)
        workers.append((c, seen))
    deadline = time.monotonic() + 10
    while sum(len(s) for _, s in workers) < 20 and time.monotonic() < deadline:
        for c, _ in workers:
            c.process_data_events(time_limit=0.01)
    counts = [len(s) for _, s in workers]
    assert sum(counts) == 20
    assert all(n > 0 for n in counts), counts
    assert sorted(b for _, s in workers for b in s) == sorted(f"task {i}".encode() for i in range(20))
    for c, _ in workers:
        c.close()
    assert pch.queue_declare("tut_tasks", passive=True).method.message_count == 0
    producer.close()


def test_publish_subscribe_fanout(hare):
    c = hare.connect()
    ch = c.channel()
    ch.exchange_declare(exchange="logs", exchange_type="fanout")
    queues = []
    for _ in range(2):
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(exchange="logs", queue=q)
        queues.append(q)
    ch.basic_publish(exchange="logs", routing_key="", body=b"info: hello")
    for q in queues:
        assert bodies(drain(ch, q, 1)) == [b"info: hello"]
    c.close()


def test_routing_direct(hare):
    c = hare.connect()
    ch = c.channel()
    ch.exchange_declare(exchange="direct_logs", exchange_type="direct")
    errors = ch.queue_declare("", exclusive=True).method.queue
    everything = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(errors, "direct_logs", routing_key="error")
    for sev in ("info", "warning", "error"):
        ch.queue_bind(everything, "direct_logs", routing_key=sev)
    for sev in ("info", "warning", "error", "debug"):
        ch.basic_publish("direct_logs", sev, sev.encode())
    assert bodies(drain(ch, errors, 1)) == [b"error"]
    assert bodies(drain(ch, everything, 3)) == [b"info", b"warning", b"error"]
    assert ch.queue_declare(errors, passive=True).method.message_count == 0
    c.close()


def test_topics(hare):
    c = hare.connect()
    ch = c.channel()
    ch.exchange_declare(exchange="topic_logs", exchange_type="topic")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, "topic_logs", "*.orange.*")
    ch.queue_bind(q2, "topic_logs", "*.*.rabbit")
    ch.queue_bind(q2, "topic_logs", "lazy.#")
    keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ]
    for k in keys:
        ch.basic_publish("topic_logs", k, k.encode())
    assert bodies(drain(ch, q1, 3)) == [b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"]
    assert bodies(drain(ch, q2, 6)) == [
        b"quick.orange.rabbit",
        b"lazy.orange.elephant",
        b"lazy.brown.fox",
        b"lazy.pink.rabbit",
        b"lazy.orange.new.rabbit",
        b"lazy",
    ]
    c.close()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def _rpc_server(hare, ready, stop):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare(queue="rpc_queue")
    ch.basic_qos(prefetch_count=1)

    def on_request(chan, method, props, body):
        n = int(body)
        chan.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(fib(n)).encode(),
        )
        chan.basic_ack(method.delivery_tag)

    ch.basic_consume(queue="rpc_queue", on_message_callback=on_request)
    ready.set()
    while not stop.is_set():
        c.process_data_events(time_limit=0.05)
    c.close()


def _rpc_call(ch, reply_queue, n, auto_ack=True):
    corr = str(uuid.uuid4())
    result = []

    def on_response(chan, method, props, body):
        if props.correlation_id == corr:
            result.append(int(body))

    tag = ch.basic_consume(queue=reply_queue, on_message_callback=on_response, auto_ack=auto_ack)
    ch.basic_publish("", "rpc_queue", str(n).encode(), pika.BasicProperties(reply_to=reply_queue, correlation_id=corr))
    deadline = time.monotonic() + 10
    while not result and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return result


def test_rpc_with_callback_queue_and_direct_reply_to(hare):
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=_rpc_server, args=(hare, ready, stop))
    server.start()
    try:
        assert ready.wait(10)
        c = hare.connect()
        ch = c.channel()
        callback = ch.queue_declare(queue="", exclusive=True).method.queue
        assert _rpc_call(ch, callback, 10) == [55]
        # Direct reply-to: no reply queue declared at all.
        assert _rpc_call(ch, "amq.rabbitmq.reply-to", 12) == [144]
        c.close()
    finally:
        stop.set()
        server.join()


def test_publisher_confirms(hare):
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("confirmed")
    ch.confirm_delivery()
    for i in range(200):
        # BlockingChannel.basic_publish waits for the broker's ack and raises on nack.
        ch.basic_publish("", "confirmed", str(i).encode())
    assert ch.queue_declare("confirmed", passive=True).method.message_count == 200
    ch.queue_delete("confirmed")
    c.close()
