"""A quorum queue's consumers and their prefetch in a three-node cluster.

A consumer with a prefetch of 10 or more has a lookahead: the queue hands its node twice its
prefetch, and the node sends the client its prefetch, the rest as the client acks. These tests
show what a client sees of it: never more unacked messages than its prefetch, messages it was
never sent go to other consumers as new ones (not redelivered) when it cancels or stops
acking, and every message arrives once. The cluster is started once for the module."""
import pytest

from conftest import wait_for
from test_cluster import bounded_cluster, connect, count_on, declare, publish_confirmed


@pytest.fixture(scope="module")
def shared():
    yield from bounded_cluster()


def setup(cluster, queue, n):
    a = cluster.nodes[0]
    declare(a, queue)
    bodies = [str(i).encode() for i in range(n)]
    assert publish_confirmed(a, queue, bodies) == bodies


class Consumer:
    """A consumer on its own connection that keeps what it is sent (acks on request)."""

    def __init__(self, node, queue, prefetch):
        self.conn = connect(node)
        self.ch = self.conn.channel()
        self.ch.basic_qos(prefetch_count=prefetch)
        self.got = []
        self.tag = self.ch.basic_consume(queue, self.on)

    def on(self, _ch, m, p, b):
        self.got.append((b, m.delivery_tag, m.redelivered, (p.headers or {}).get("x-delivery-count", 0)))

    def pump(self, until, what, timeout=30):
        wait_for(lambda: (self.conn.process_data_events(0.05), until())[1], timeout=timeout, what=what)

    def bodies(self):
        return [int(b) for b, *_ in self.got]

    def close(self):
        if self.conn.is_open:
            self.conn.close()


def next_consumer_gets(node, queue, prefetch, expect):
    """A new consumer through `node` gets the bodies `expect` first, none as redelivered."""
    b = Consumer(node, queue, prefetch)
    try:
        b.pump(lambda: len(b.got) >= len(expect), "the next consumer's prefetch")
        assert b.bodies() == expect
        assert all(not r and n == 0 for _, _, r, n in b.got), "a message never sent went out as redelivered"
    finally:
        b.close()


def test_a_stalled_consumer_holds_its_prefetch_and_what_waited_goes_to_others_as_new(shared):
    q = "lookahead-stall"
    setup(shared, q, 100)
    a = Consumer(shared.nodes[1], q, 20)
    try:
        a.pump(lambda: len(a.got) >= 20, "the first consumer's prefetch")
        # Its node held 20 more for it; unsent for a second, they go back to the queue.
        wait_for(lambda: (a.conn.process_data_events(0.05), count_on(shared.nodes[0], q) == 80)[1], timeout=30,
                 what="the stalled consumer's lookahead back in the queue")
        a.conn.process_data_events(0.2)
        assert a.bodies() == list(range(20)), "the client got more than its prefetch"
        next_consumer_gets(shared.nodes[2], q, 10, list(range(20, 30)))
        # The first one, held to its prefetch now, goes on after its acks.
        a.ch.basic_ack(a.got[-1][1], multiple=True)
        a.pump(lambda: len(a.got) >= 40, "the first consumer's next prefetch after its acks")
        assert len(set(a.bodies())) == len(a.got), "a message arrived twice"
    finally:
        a.close()


def test_a_cancelled_consumer_s_lookahead_goes_first_to_the_next_consumer(shared):
    q = "lookahead-cancel"
    setup(shared, q, 50)
    a = Consumer(shared.nodes[2], q, 10)
    try:
        a.pump(lambda: len(a.got) >= 10, "the first consumer's prefetch")
        a.ch.basic_cancel(a.tag)
        # The 10 it holds stay unacked; the 10 its node held come back, at the front.
        wait_for(lambda: count_on(shared.nodes[0], q) == 40, timeout=30, what="the cancelled lookahead back")
        next_consumer_gets(shared.nodes[1], q, 10, list(range(10, 20)))
    finally:
        a.close()


def test_busy_consumers_on_every_node_get_each_message_once(shared):
    q = "lookahead-busy"
    n = 3000
    setup(shared, q, n)
    consumers = [Consumer(node, q, 25) for node in shared.nodes]
    try:
        def step():
            for c in consumers:
                c.conn.process_data_events(0.01)
                if c.got and c.got[-1][1] != getattr(c, "acked", None):
                    c.ch.basic_ack(c.got[-1][1], multiple=True)
                    c.acked = c.got[-1][1]
            return sum(len(c.got) for c in consumers) >= n

        wait_for(step, timeout=60, what=f"{n} messages across three consumers")
        every = sorted(b for c in consumers for b in c.bodies())
        assert every == list(range(n)), "a message was lost or came twice"
        # (Not each consumer's order: a consumer whose client stalls a second has what its
        # node held for it released to the front, for another consumer.)
        for c in consumers:
            assert not any(r for _, _, r, _ in c.got), "a message was redelivered"
    finally:
        for c in consumers:
            c.close()
