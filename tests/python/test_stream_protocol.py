"""RabbitMQ's stream protocol through the rstream client from PyPI and raw sockets, beside
AMQP through pika: publish with confirms, consume from each offset specification,
deduplication and stored offsets across restarts, AMQP 0-9-1 and the stream protocol reading
each other's messages, credit, refusals with the protocol's response codes, and bad frames
that close only their own connection."""
import asyncio
import struct
import time

import pika
import pytest
from rstream import (AMQPMessage, CompressionType, Consumer, ConsumerOffsetSpecification, FilterConfiguration,
                     OffsetType, Producer, amqp_decoder)

from conftest import Hare, wait_for
from helpers import api, free_ports
from stream_client import (ACCESS_REFUSED, AUTH_FAILURE, CLOSE, CREATE, CREDIT, DELETE, DELETE_SUPER, DELIVER,
                           FRAME_TOO_LARGE, METADATA_UPDATE, NO_OFFSET, OK, PRECONDITION_FAILED,
                           PUBLISHER_MISSING, STORE_OFFSET, STREAM_DOES_NOT_EXIST, STREAM_EXISTS,
                           STREAM_NOT_AVAILABLE, SUB_EXISTS, SUB_MISSING, SUBSCRIBE, UNKNOWN_FRAME,
                           UNSUBSCRIBE, VHOST_ACCESS_FAILURE, Raw, s16)


@pytest.fixture(scope="module")
def broker():
    (port,) = free_ports(1)
    h = Hare(extra_args=["--stream-port", str(port)])
    h.stream_port = port
    wait_for(lambda: "stream protocol listening" in h.read_log(), what="the stream listener")
    yield h
    h.stop()


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def create(broker, name, **arguments):
    async def go():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as p:
            await p.create_stream(name, arguments=arguments or None)
    run(go())


def stream_length(broker, name):
    status, q = api(broker.http_port, "GET", f"/api/queues/%2F/{name}")
    assert status == 200
    return q["messages"]


def consume(broker, stream, n, spec=None, decoder=None, timeout=10):
    """The first `n` messages an rstream consumer receives: (offset, message)."""
    async def go():
        got, done = [], asyncio.Event()

        async def on(msg, ctx):
            got.append((ctx.offset, msg))
            if len(got) >= n:
                done.set()
        async with Consumer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as c:
            await c.start()
            await c.subscribe(stream, on, decoder=decoder, offset_specification=spec or ConsumerOffsetSpecification(OffsetType.FIRST))
            await asyncio.wait_for(done.wait(), timeout)
        return got[:n]
    return run(go())


def test_publish_with_confirms_and_consume_from_first(broker):
    create(broker, "sp-basic")

    async def publish():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as p:
            for i in range(5):
                await p.send_wait("sp-basic", AMQPMessage(body=f"m{i}".encode(), application_properties={"i": i}))
            await p.send_batch("sp-basic", [AMQPMessage(body=f"b{i}".encode()) for i in range(200)])
    run(publish())
    got = consume(broker, "sp-basic", 205, decoder=amqp_decoder)
    assert [o for o, _ in got] == list(range(205))
    assert [bytes(m.body) if isinstance(m.body, (bytes, bytearray)) else b"".join(m.body) for _, m in got[:2]] == [b"m0", b"m1"]
    assert got[3][1].application_properties == {b"i": 3} or got[3][1].application_properties == {"i": 3}
    assert stream_length(broker, "sp-basic") == 205


def test_offset_specifications(broker):
    create(broker, "sp-offsets")
    r = Raw(broker.stream_port)
    assert r.declare_publisher(0, "", "sp-offsets") == OK
    # Three confirmed publishes: three chunks, at offsets 0-2, 3-5 and 6-8.
    for batch in range(3):
        r.publish(0, [(batch * 3 + i, b"x%d" % (batch * 3 + i)) for i in range(3)])
        r.confirms(3)
    first = lambda spec: consume(broker, "sp-offsets", 1, spec=spec)[0]
    assert first(ConsumerOffsetSpecification(OffsetType.FIRST))[0] == 0
    assert first(ConsumerOffsetSpecification(OffsetType.OFFSET, 5)) == (5, b"x5")
    assert first(ConsumerOffsetSpecification(OffsetType.LAST))[0] == 6
    assert first(ConsumerOffsetSpecification(OffsetType.TIMESTAMP, 0))[0] == 0
    # `next` (and a timestamp in the future) wait for what comes after the subscription.
    c = Raw(broker.stream_port)
    assert c.subscribe(1, "sp-offsets", offset_type=3) == OK
    assert c.subscribe(2, "sp-offsets", offset_type=5, offset=int(time.time() * 1000) + 3_600_000) == OK
    r.publish(0, [(9, b"x9")])
    assert r.confirms(1) == ([9], [])
    assert [c.deliver(), c.deliver()] == [(9, [b"x9"])] * 2
    c.close()
    r.close()


def test_credit_bounds_the_chunks_sent(broker):
    create(broker, "sp-credit")
    r = Raw(broker.stream_port)
    assert r.declare_publisher(0, "", "sp-credit") == OK
    for i in range(3):
        r.publish(0, [(i, b"c%d" % i)])
        r.confirms(1)
    c = Raw(broker.stream_port)
    assert c.subscribe(0, "sp-credit", credit=1) == OK
    assert c.deliver() == (0, [b"c0"])
    # One credit, one chunk: nothing more has come by the time a later response does.
    assert c.query_offset("nobody", "sp-credit")[0] == NO_OFFSET
    assert not [f for f in c.pending if f[0] == DELIVER]
    c.send(CREDIT, struct.pack(">BH", 0, 2))
    assert [c.deliver(), c.deliver()] == [(1, [b"c1"]), (2, [b"c2"])]
    # Credit to a subscription that does not exist is answered with the code.
    c.send(CREDIT, struct.pack(">BH", 9, 1))
    assert c.next_of(CREDIT | 0x8000) == struct.pack(">HB", SUB_MISSING, 9)
    c.close()
    r.close()


def test_deduplication_and_stored_offsets_survive_restarts(broker):
    create(broker, "sp-dedup")
    r = Raw(broker.stream_port)
    assert r.declare_publisher(0, "app-1", "sp-dedup") == OK
    assert r.query_seq("app-1", "sp-dedup") == (OK, 0)
    r.publish(0, [(i, b"d%d" % i) for i in range(1, 6)])
    assert r.confirms(5) == ([1, 2, 3, 4, 5], [])
    # Ids 3 to 5 again, and 6 and 7: all confirmed, only 6 and 7 stored.
    r.publish(0, [(i, b"d%d" % i) for i in range(3, 8)])
    assert sorted(r.confirms(5)[0]) == [3, 4, 5, 6, 7]
    assert r.query_seq("app-1", "sp-dedup") == (OK, 7)
    r.send(STORE_OFFSET, s16("reader-1") + s16("sp-dedup") + struct.pack(">Q", 4))
    assert r.query_offset("reader-1", "sp-dedup") == (OK, 4)
    assert r.query_offset("reader-2", "sp-dedup") == (NO_OFFSET, 0)
    r.close()
    wait_for(lambda: stream_length(broker, "sp-dedup") == 7, what="7 messages")
    top = 7
    for graceful in (True, False):
        broker.restart(graceful=graceful)
        wait_for(lambda: "stream protocol listening" in broker.read_log(), what="the stream listener")
        r = wait_for(lambda: _try(lambda: Raw(broker.stream_port)), what="a stream connection")
        assert r.query_seq("app-1", "sp-dedup") == (OK, top)
        assert r.query_offset("reader-1", "sp-dedup") == (OK, 4)
        assert r.declare_publisher(0, "app-1", "sp-dedup") == OK
        # The last id again (confirmed, not stored) and a new one.
        r.publish(0, [(top, b"d%d" % top), (top + 1, b"d%d" % (top + 1))])
        assert sorted(r.confirms(2)[0]) == [top, top + 1]
        top += 1
        assert stream_length(broker, "sp-dedup") == top
        r.close()
    got = consume(broker, "sp-dedup", top)
    assert [m for _, m in got] == [b"d%d" % i for i in range(1, top + 1)]


def _try(f):
    try:
        return f()
    except OSError:
        return None


def test_amqp_0_9_1_and_the_stream_protocol_read_each_other(broker):
    create(broker, "sp-interop")
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "sp-interop", b"from-amqp", pika.BasicProperties(
        content_type="text/plain", headers={"h": "v", "n": 5}, message_id="id-1", delivery_mode=2))

    async def publish():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as p:
            await p.send_wait("sp-interop", AMQPMessage(body=b"from-stream", application_properties={"k": "w"}))
    run(publish())
    got = consume(broker, "sp-interop", 2, decoder=amqp_decoder)
    m = got[0][1]
    body = lambda m: bytes(m.body) if isinstance(m.body, (bytes, bytearray)) else b"".join(m.body)
    assert body(m) == b"from-amqp"
    props = {(k.decode() if isinstance(k, bytes) else k): v for k, v in m.application_properties.items()}
    assert props["h"] in ("v", b"v") and props["n"] == 5
    assert m.properties.content_type in ("text/plain", b"text/plain")
    assert m.properties.message_id in ("id-1", b"id-1")
    # And the stream protocol's message over AMQP 0-9-1, with its offset.
    ch.basic_qos(prefetch_count=10)
    received = []
    ch.basic_consume("sp-interop", lambda c, d, p, b: received.append((p, b)), arguments={"x-stream-offset": 1})
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    (props, body_) = received[0]
    assert body_ == b"from-stream"
    assert props.headers["k"] in ("w", b"w") and props.headers["x-stream-offset"] == 1
    conn.close()


def test_compressed_sub_entry_batches_are_stored_and_sent_as_they_are(broker):
    """A gzip sub-entry batch takes an offset for each of its messages and reaches rstream
    consumers whole, which decompress it: from `first`, and from an offset inside it (the
    client passes over what is before). An AMQP 0-9-1 consumer of the stream passes over the
    batch (the broker does not decompress), and it is all still there after a restart."""
    create(broker, "sp-gzip")

    async def publish():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as p:
            await p.send_wait("sp-gzip", AMQPMessage(body=b"plain-0"))
            # rstream sends a batch from its buffer a moment later: wait for its confirm.
            confirmed = asyncio.Event()

            async def on_confirm(status):
                assert status.is_confirmed
                confirmed.set()
            await p.send_sub_entry("sp-gzip", [AMQPMessage(body=b"z%d" % i) for i in range(5)],
                                   compression_type=CompressionType.Gzip, on_publish_confirm=on_confirm)
            await asyncio.wait_for(confirmed.wait(), 10)
            await p.send_wait("sp-gzip", AMQPMessage(body=b"plain-6"))
    run(publish())
    body = lambda m: bytes(m.body) if isinstance(m.body, (bytes, bytearray)) else b"".join(m.body)
    want = [(0, b"plain-0")] + [(1 + i, b"z%d" % i) for i in range(5)] + [(6, b"plain-6")]
    for restarted in (False, True):
        if restarted:
            broker.restart()
            wait_for(lambda: "stream protocol listening" in broker.read_log(), what="the stream listener")
        got = consume(broker, "sp-gzip", 7, decoder=amqp_decoder)
        assert [(o, body(m)) for o, m in got] == want
        got = consume(broker, "sp-gzip", 1, spec=ConsumerOffsetSpecification(OffsetType.OFFSET, 3),
                      decoder=amqp_decoder)
        assert [(o, body(m)) for o, m in got] == [(3, b"z2")]
        assert stream_length(broker, "sp-gzip") == 7
        conn = broker.connect()
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)
        received = []
        ch.basic_consume("sp-gzip", lambda c, d, p, b: received.append((p.headers["x-stream-offset"], b)),
                         arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert received == [(0, b"plain-0"), (6, b"plain-6")]
        conn.close()


def test_filtered_publishes_and_subscriptions(broker):
    """rstream's filtering: a producer with a filter value extractor publishes with version 2
    of publish (a filter value per message), which the broker says it takes; a consumer
    subscribed with filter values gets the messages its filter keeps, at their offsets."""
    create(broker, "sp-filter")

    async def region(m):
        return m.application_properties["region"]

    async def publish():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest",
                            filter_value_extractor=region) as p:
            for i in range(6):
                r = ["emea", "apac", "amer"][i % 3]
                await p.send_wait("sp-filter", AMQPMessage(body=b"%s-%d" % (r.encode(), i),
                                                           application_properties={"region": r}))
    run(publish())
    assert stream_length(broker, "sp-filter") == 6

    def is_emea(m):
        props = {(k.decode() if isinstance(k, bytes) else k): v for k, v in m.application_properties.items()}
        return props["region"] in ("emea", b"emea")

    async def go():
        got, done = [], asyncio.Event()

        async def on(msg, ctx):
            got.append((ctx.offset, bytes(msg.body) if isinstance(msg.body, (bytes, bytearray)) else b"".join(msg.body)))
            if len(got) >= 2:
                done.set()
        async with Consumer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as c:
            await c.start()
            await c.subscribe("sp-filter", on, decoder=amqp_decoder,
                              offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST),
                              filter_input=FilterConfiguration(values_to_filter=["emea"], predicate=is_emea))
            await asyncio.wait_for(done.wait(), 10)
        return got
    assert run(go()) == [(0, b"emea-0"), (3, b"emea-3")]


def test_a_filtered_subscription_is_not_sent_chunks_without_its_values(broker):
    """Each confirmed publish below is a chunk of its own. A subscription with a filter value
    is sent only the chunks that hold it (and, with match-unfiltered, those holding messages
    without a value); one without a filter gets them all."""
    create(broker, "sp-skip")
    r = Raw(broker.stream_port)
    assert r.declare_publisher(0, "", "sp-skip") == OK
    values = ["emea", "apac", None, "emea", "amer", None]
    for i, v in enumerate(values):
        r.publish_v2(0, [(i, v, b"m%d" % i)])
        assert r.confirms(1) == ([i], [])
    c = Raw(broker.stream_port)
    assert c.subscribe(1, "sp-skip", properties={"filter.0": "emea"}) == OK
    assert c.subscribe(2, "sp-skip", properties={"filter.0": "amer", "match-unfiltered": "true"}) == OK
    assert c.subscribe(3, "sp-skip") == OK
    got = {1: [], 2: [], 3: []}
    while sum(map(len, got.values())) < 2 + 3 + 6:
        sid, first = c.deliver_of()
        got[sid].append(first)
    assert got == {1: [0, 3], 2: [2, 4, 5], 3: [0, 1, 2, 3, 4, 5]}
    # A later chunk with the value reaches it next: those between were passed over.
    r.publish_v2(0, [(6, "apac", b"m6"), ])
    r.confirms(1)
    r.publish_v2(0, [(7, "emea", b"m7")])
    r.confirms(1)
    seen = [c.deliver_of() for _ in range(3)]
    assert sorted(seen) == [(1, 7), (3, 6), (3, 7)]
    # AMQP 0-9-1 publishers give their filter value in the x-stream-filter-value header.
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "sp-skip", b"m8", pika.BasicProperties(headers={"x-stream-filter-value": "emea"}))
    ch.basic_publish("", "sp-skip", b"m9")
    conn.close()
    seen = [c.deliver_of() for _ in range(4)]
    assert sorted(seen) == [(1, 8), (2, 9), (3, 8), (3, 9)]
    c.close()
    r.close()


def test_deliver_version_2_carries_the_committed_chunk_id_to_clients_that_read_it(broker):
    """As RabbitMQ 3.13: deliver is not among the broker's own versions, but a client that
    lists deliver up to version 2 gets version 2 frames, with the committed chunk id after the
    subscription id; the others get version 1."""
    create(broker, "sp-v2")
    r = Raw(broker.stream_port)
    assert r.declare_publisher(0, "", "sp-v2") == OK
    for i in range(3):
        r.publish(0, [(i, b"c%d" % i)])
        assert r.confirms(1) == ([i], [])
    old, new = Raw(broker.stream_port), Raw(broker.stream_port)
    listed = new.exchange_versions([(DELIVER, 1, 2)])
    assert DELIVER not in [k for k, _, _ in listed]
    committed = new.stream_stats("sp-v2")["committed_chunk_id"]
    assert committed == 2  # each confirmed publish is a chunk of its own
    assert old.subscribe(1, "sp-v2") == OK and new.subscribe(1, "sp-v2") == OK
    p = old.next_of(DELIVER)
    assert old.versions[DELIVER] == 1 and p[1] == 0x50 and struct.unpack(">Q", p[25:33])[0] == 0
    firsts = []
    for _ in range(3):
        p = new.next_of(DELIVER)
        assert new.versions[DELIVER] == 2
        (sid, committed_id), chunk = struct.unpack(">BQ", p[:9]), p[9:]
        assert sid == 1 and committed_id == committed and chunk[0] == 0x50
        firsts.append(struct.unpack(">Q", chunk[24:32])[0])
    assert firsts == [0, 1, 2]
    for c in (r, old, new):
        c.close()


def test_refusals_carry_the_protocols_codes(broker):
    create(broker, "sp-refusals")
    r = Raw(broker.stream_port)
    assert r.code(CREATE, s16("sp-refusals") + struct.pack(">I", 0)) == STREAM_EXISTS
    assert r.code(CREATE, s16("sp-bad-arg") + struct.pack(">I", 1) + s16("max-length-bytes") + s16("lots")) == PRECONDITION_FAILED
    assert r.code(CREATE, s16("amq.reserved") + struct.pack(">I", 0)) == PRECONDITION_FAILED
    assert r.code(DELETE, s16("sp-missing")) == STREAM_DOES_NOT_EXIST
    assert r.subscribe(0, "sp-missing") == STREAM_DOES_NOT_EXIST
    assert r.declare_publisher(0, "", "sp-missing") == STREAM_DOES_NOT_EXIST
    assert r.subscribe(0, "sp-refusals") == OK
    assert r.subscribe(0, "sp-refusals") == SUB_EXISTS
    assert r.code(UNSUBSCRIBE, struct.pack(">B", 5)) == SUB_MISSING
    assert r.code(UNSUBSCRIBE, struct.pack(">B", 0)) == OK
    assert r.query_seq("x", "sp-missing") == (STREAM_DOES_NOT_EXIST, 0)
    assert r.query_offset("x", "sp-missing") == (STREAM_DOES_NOT_EXIST, 0)
    # A publisher id taken, and a publish through one never declared.
    assert r.declare_publisher(1, "ref", "sp-refusals") == OK
    assert r.declare_publisher(1, "", "sp-refusals") == PRECONDITION_FAILED
    assert r.declare_publisher(2, "ref", "sp-refusals") == PRECONDITION_FAILED
    r.publish(7, [(1, b"x"), (2, b"y")])
    assert r.confirms(2) == ([], [(1, PUBLISHER_MISSING), (2, PUBLISHER_MISSING)])
    r.close()
    # Logins: a wrong password, a vhost that does not exist.
    assert Raw(broker.stream_port, login=False).login("guest", "wrong", "/") == AUTH_FAILURE
    assert Raw(broker.stream_port, login=False).login("guest", "guest", "no-such-vhost") == VHOST_ACCESS_FAILURE
    # A user who may only read: no create, no publisher; subscribing is allowed.
    assert api(broker.http_port, "PUT", "/api/users/sp-reader", {"password": "pw", "tags": ""})[0] in (201, 204)
    assert api(broker.http_port, "PUT", "/api/permissions/%2F/sp-reader", {"configure": "", "write": "", "read": ".*"})[0] in (201, 204)
    u = Raw(broker.stream_port, user="sp-reader", password="pw")
    assert u.code(CREATE, s16("sp-new") + struct.pack(">I", 0)) == ACCESS_REFUSED
    assert u.declare_publisher(0, "", "sp-refusals") == ACCESS_REFUSED
    assert u.code(DELETE, s16("sp-refusals")) == ACCESS_REFUSED
    assert u.subscribe(0, "sp-refusals") == OK
    u.close()


def test_deleting_a_stream_tells_its_subscribers(broker):
    create(broker, "sp-deleted")
    c = Raw(broker.stream_port)
    assert c.subscribe(0, "sp-deleted") == OK
    assert c.declare_publisher(0, "", "sp-deleted") == OK
    r = Raw(broker.stream_port)
    assert r.code(DELETE, s16("sp-deleted")) == OK
    update = c.next_of(METADATA_UPDATE)
    assert update == struct.pack(">H", STREAM_NOT_AVAILABLE) + s16("sp-deleted")
    # Its subscription and publisher are gone with it.
    assert c.code(UNSUBSCRIBE, struct.pack(">B", 0)) == SUB_MISSING
    c.publish(0, [(1, b"x")])
    assert c.confirms(1) == ([], [(1, PUBLISHER_MISSING)])
    c.close()
    r.close()


def test_bad_frames_close_only_their_connection(broker):
    create(broker, "sp-bad")
    bystander = Raw(broker.stream_port)
    assert bystander.subscribe(0, "sp-bad") == OK
    # A frame over the negotiated maximum: closed with "frame too large".
    r = Raw(broker.stream_port)
    r.s.sendall(struct.pack(">I", 50_000_000) + b"\0" * 16)
    p = r.next_of(CLOSE)
    assert struct.unpack(">IH", p[:6])[1] == FRAME_TOO_LARGE
    assert r.read() is None
    # An unknown command after open: "unknown frame".
    r = Raw(broker.stream_port)
    r.send(0x7777, struct.pack(">I", 1))
    p = r.next_of(CLOSE)
    assert struct.unpack(">IH", p[:6])[1] == UNKNOWN_FRAME
    # A truncated command, and garbage before the handshake.
    r = Raw(broker.stream_port)
    r.send(SUBSCRIBE, struct.pack(">IB", 1, 0) + b"\x00")
    assert r.next_of(CLOSE)
    g = Raw(broker.stream_port, login=False)
    g.s.sendall(b"\x00\x00\x00\x08" + b"\xff" * 8)
    assert g.read() is None
    # The bystander is served as before.
    p = Raw(broker.stream_port)
    assert p.declare_publisher(0, "", "sp-bad") == OK
    p.publish(0, [(1, b"still here")])
    assert p.confirms(1) == ([1], [])
    assert bystander.deliver() == (0, [b"still here"])


def test_connections_and_listeners_in_the_management_api(broker):
    r = Raw(broker.stream_port)
    conns = wait_for(lambda: [c for c in api(broker.http_port, "GET", "/api/connections")[1] if c["protocol"] == "stream"],
                     what="the stream connection listed")
    assert conns[0]["user"] == "guest" and conns[0]["vhost"] == "/"
    status, overview = api(broker.http_port, "GET", "/api/overview")
    ports = {l["protocol"]: l["port"] for l in overview["listeners"]}
    assert ports["stream"] == broker.stream_port
    r.close()


def test_super_streams_route_by_key_and_list_their_partitions(broker):
    from rstream import RouteType, SuperStreamConsumer, SuperStreamCreationOption, SuperStreamProducer
    common = dict(port=broker.stream_port, username="guest", password="guest", super_stream="orders")

    async def routing_key(message):
        return message.application_properties["id"]

    async def publish():
        async with SuperStreamProducer("127.0.0.1", **common,
                                       super_stream_creation_option=SuperStreamCreationOption(n_partitions=3),
                                       routing_extractor=routing_key, routing=RouteType.Hash) as p:
            for i in range(30):
                await p.send(AMQPMessage(body=b"o%d" % i, application_properties={"id": str(i)}))
    run(publish())
    lengths = lambda: [stream_length(broker, f"orders-{i}") for i in range(3)]
    wait_for(lambda: sum(lengths()) == 30, what="30 messages in the partitions")
    assert all(n > 0 for n in lengths()), lengths()

    async def consume_all():
        got, done = [], asyncio.Event()

        async def on(msg, ctx):
            got.append(bytes(msg.body) if isinstance(msg.body, (bytes, bytearray)) else b"".join(msg.body))
            if len(got) >= 30:
                done.set()
        async with SuperStreamConsumer("127.0.0.1", **common) as c:
            await c.subscribe(on, decoder=amqp_decoder)
            await asyncio.wait_for(done.wait(), 10)
        return got
    assert sorted(run(consume_all())) == sorted(b"o%d" % i for i in range(30))
    r = Raw(broker.stream_port)
    assert r.partitions("orders") == (OK, ["orders-0", "orders-1", "orders-2"])
    assert r.route("1", "orders") == (OK, ["orders-1"])
    assert r.route("no-such-key", "orders") == (OK, [])
    assert r.route("1", "no-such-super-stream") == (STREAM_DOES_NOT_EXIST, [])
    assert r.partitions("no-such-super-stream") == (STREAM_DOES_NOT_EXIST, [])
    # Refusals: an existing super stream or partition, duplicate partitions, keys not matching.
    assert r.create_super("orders", ["x-0"], ["0"]) == STREAM_EXISTS
    assert r.create_super("other", ["orders-0"], ["0"]) == STREAM_EXISTS
    assert r.create_super("other", ["o-a", "o-a"], ["a", "b"]) == PRECONDITION_FAILED
    assert r.create_super("other", ["o-a", "o-b"], ["a"]) == PRECONDITION_FAILED
    assert r.code(DELETE_SUPER, s16("orders")) == OK
    assert api(broker.http_port, "GET", "/api/exchanges/%2F/orders")[0] == 404
    assert all(api(broker.http_port, "GET", f"/api/queues/%2F/orders-{i}")[0] == 404 for i in range(3))
    assert r.code(DELETE_SUPER, s16("orders")) == STREAM_DOES_NOT_EXIST
    r.close()


def test_streams_and_their_subscriptions_in_the_management_api_and_metrics(broker):
    create(broker, "sp-api")

    async def publish():
        async with Producer("127.0.0.1", port=broker.stream_port, username="guest", password="guest") as p:
            await p.send_batch("sp-api", [AMQPMessage(body=b"m%d" % i) for i in range(100)])
    run(publish())
    status, q = api(broker.http_port, "GET", "/api/queues/%2F/sp-api")
    assert (q["committed_offset"], q["first_offset"], q["segments"]) == (99, 0, 1)
    assert q["stream_size_bytes"] > 100 * 2 and q["members"] == q["online"] == [q["node"]]
    # A subscription without credit is sent nothing: it lags by the whole stream.
    r = Raw(broker.stream_port)
    assert r.subscribe(3, "sp-api", credit=0, properties={"note": "idle"}) == OK

    def consumer():
        status, cs = api(broker.http_port, "GET", "/api/stream/consumers/%2F")
        return next((c for c in cs if c["queue"]["name"] == "sp-api"), None)
    c = wait_for(consumer, what="the subscription listed")
    assert (c["subscription_id"], c["offset"], c["offset_lag"], c["consumed"], c["credits"]) == (3, 0, 100, 0, 0)
    assert c["properties"] == {"note": "idle"} and c["active"] is True
    assert c["connection_details"]["user"] == "guest"
    # Counted among the stream's consumers and listed with them, as RabbitMQ's stream plugin
    # registers a subscription.
    q = api(broker.http_port, "GET", "/api/queues/%2F/sp-api")[1]
    assert q["consumers"] == 1
    want = {"consumer_tag": "stream.subid-3", "queue": {"name": "sp-api", "vhost": "/"}, "ack_required": False,
            "prefetch_count": 0, "exclusive": False, "arguments": {"note": "idle"}, "active": True,
            "activity_status": "up", "channel_details": {}}
    assert q["consumer_details"] == [want]
    assert want in api(broker.http_port, "GET", "/api/consumers/%2F")[1]
    assert want in api(broker.http_port, "GET", "/api/consumers")[1]
    # Credit given: it reads to the end.
    r.send(CREDIT, struct.pack(">BH", 3, 1000))
    wait_for(lambda: (consumer()["offset"], consumer()["offset_lag"], consumer()["consumed"]) == (100, 0, 100),
             what="the subscription caught up")
    text = metrics_text(broker, "/metrics/per-object")
    assert 'hare_stream_committed_offset{vhost="/",queue="sp-api"} 99' in text
    assert 'rabbitmq_stream_consumer_max_offset_lag{vhost="/",queue="sp-api"} 0' in text
    assert 'rabbitmq_stream_segments_total{vhost="/",queue="sp-api"} 1' in text
    r.close()
    wait_for(lambda: api(broker.http_port, "GET", "/api/queues/%2F/sp-api")[1]["consumers"] == 0,
             what="the subscription gone with its connection")
    assert api(broker.http_port, "GET", "/api/stream/consumers/no-such-vhost")[0] == 404


def metrics_text(broker, path):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}{path}") as resp:
        return resp.read().decode()
