"""Single active consumer on streams over the stream protocol, as RabbitMQ's stream plugin runs
it: subscriptions that share a name take turns on a stream (the next one takes over where the
last stored its offset), and on a super stream the partitions spread over the group's members,
moving when members come and go, never read by two at once. Through rstream and raw frames."""
import asyncio

from rstream import (AMQPMessage, Consumer, OffsetSpecification, OffsetType, Producer, RouteType,
                     SuperStreamConsumer, SuperStreamCreationOption, SuperStreamProducer)
from rstream.exceptions import OffsetNotFound

from helpers import api
from stream_client import DELIVER, OK, PRECONDITION_FAILED, Raw
from test_stream_protocol import broker  # noqa: F401  (a broker with its stream port, for this module)

SAC = {"single-active-consumer": "true", "name": "app"}


def client(broker, cls=Consumer, **kw):
    return cls("127.0.0.1", port=broker.stream_port, username="guest", password="guest", **kw)


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate, what, timeout=10):
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}")


def test_the_next_member_takes_over_from_the_stored_offset(broker):
    async def go():
        async with client(broker, Producer) as p:
            await p.create_stream("sac-plain")
            await p.send_batch("sac-plain", [AMQPMessage(body=b"m%d" % i) for i in range(20)])
        got = {"a": [], "b": []}
        turns = []

        def resume_from_stored(tag):
            async def on_update(active, ctx):
                turns.append((tag, active))
                try:
                    stored = await ctx.consumer.query_offset(ctx.stream, ctx.reference)
                    return OffsetSpecification(OffsetType.OFFSET, stored + 1)
                except OffsetNotFound:
                    return OffsetSpecification(OffsetType.FIRST, 0)
            return on_update

        consumers = {}
        for tag in ("a", "b"):
            c = client(broker)
            await c.start()
            consumers[tag] = c

            async def on(msg, ctx, tag=tag):
                got[tag].append(ctx.offset)
                await ctx.consumer.store_offset(ctx.stream, "app", ctx.offset)
            await c.subscribe("sac-plain", on, properties=SAC, consumer_update_listener=resume_from_stored(tag))
        await until(lambda: len(got["a"]) == 20, "a to read the stream")
        # Only the first member reads; the second waits its turn, as the management API
        # shows them (RabbitMQ's activity_status of a single active consumer).
        assert got["b"] == [] and turns == [("a", True)]
        status, listed = api(broker.http_port, "GET", "/api/queues/%2F/sac-plain")
        assert sorted((c["active"], c["activity_status"]) for c in listed["consumer_details"]) == [
            (False, "waiting"), (True, "single_active")]
        await consumers["a"].close()
        await until(lambda: turns == [("a", True), ("b", True)], "b's turn")
        async with client(broker, Producer) as p:
            await p.send_batch("sac-plain", [AMQPMessage(body=b"n%d" % i) for i in range(5)])
        await until(lambda: len(got["b"]) == 5, "b to read the new messages")
        await consumers["b"].close()
        return got
    got = run(go())
    # b starts after a's stored offset: nothing twice, nothing missed.
    assert got == {"a": list(range(20)), "b": list(range(20, 25))}


def test_a_super_streams_partitions_spread_over_the_group(broker):
    common = dict(super_stream="sac-orders")
    props = {**SAC, "super-stream": "sac-orders"}

    async def publish(n, tag):
        async def key(message):
            return message.application_properties["k"]
        async with client(broker, SuperStreamProducer, routing_extractor=key, routing=RouteType.Hash,
                          super_stream_creation_option=SuperStreamCreationOption(n_partitions=3), **common) as p:
            for i in range(n):
                await p.send(AMQPMessage(body=b"%s-%d" % (tag, i), application_properties={"k": f"{tag}{i}"}))

    async def go():
        await publish(1, b"warmup")
        got = {"a": [], "b": []}
        active = {"a": set(), "b": set()}
        members = {}
        for tag in ("a", "b"):
            async def on_update(is_active, ctx, tag=tag):
                (active[tag].add if is_active else active[tag].discard)(ctx.stream)
                return OffsetSpecification(OffsetType.NEXT, 0)

            async def on(msg, ctx, tag=tag):
                got[tag].append((ctx.stream, bytes(msg)))
            c = client(broker, SuperStreamConsumer, **common)
            await c.start()
            await c.subscribe(on, properties=props, consumer_update_listener=on_update)
            members[tag] = c
            if tag == "a":
                await until(lambda: len(active["a"]) == 3, "a on every partition")
        # Partition i goes to member i % 2: b took sac-orders-1 from a, which stepped down first.
        await until(lambda: active == {"a": {"sac-orders-0", "sac-orders-2"}, "b": {"sac-orders-1"}},
                    f"the partitions spread, not {active}")
        await publish(60, b"x")
        await until(lambda: len(got["a"]) + len(got["b"]) == 60, "60 messages consumed")
        assert {s for s, _ in got["a"]} <= {"sac-orders-0", "sac-orders-2"}
        assert {s for s, _ in got["b"]} == {"sac-orders-1"}
        assert len({m for _, m in got["a"] + got["b"]}) == 60
        # b leaves: its partition goes back to a.
        await members["b"].close()
        await until(lambda: active["a"] == {"sac-orders-0", "sac-orders-1", "sac-orders-2"}, "a on every partition again")
        got["a"].clear()
        await publish(30, b"y")
        await until(lambda: len(got["a"]) == 30, "a to consume all 30")
        await members["a"].close()
    run(go())


def test_a_member_whose_connection_dies_hands_over_and_waiting_members_get_nothing(broker):
    create = Raw(broker.stream_port)
    assert create.code(13, b"\x00\x09sac-crash" + b"\x00\x00\x00\x00") == OK
    a, b = Raw(broker.stream_port), Raw(broker.stream_port)
    # A name is required.
    assert a.subscribe(1, "sac-crash", properties={"single-active-consumer": "true"}) == PRECONDITION_FAILED
    assert a.subscribe(1, "sac-crash", properties=SAC) == OK
    corr, sid, is_active = a.consumer_update()
    assert (sid, is_active) == (1, 1)
    a.answer_update(corr)
    assert b.subscribe(7, "sac-crash", properties=SAC) == OK
    create.declare_publisher(1, "", "sac-crash")
    create.publish(1, [(i, b"\x00\x53\x75\xa0\x01x") for i in range(3)])
    assert create.confirms(3) == ([0, 1, 2], [])
    first, messages = a.deliver()
    assert first == 0 and len(messages) >= 1
    a.close()
    # b's turn comes (and nothing was delivered to it before).
    corr, sid, is_active = b.consumer_update()
    assert (sid, is_active) == (7, 1)
    assert not any(key == DELIVER for key, _ in b.pending)
    b.answer_update(corr, offset_type=1)
    first, messages = b.deliver()
    assert first == 0
    b.close()
    create.close()
