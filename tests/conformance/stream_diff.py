"""The stream protocol, Hare against RabbitMQ (its rabbitmq_stream plugin): one scripted
scenario of creates, deletes, publishers, publishes (deduplicated or not), subscriptions,
credit, offsets and refusals on raw sockets, whose every response code, confirm, error and
server-sent frame must be the same on both brokers. Usage:
    stream_diff.py --a HOST:PORT --b HOST:PORT"""
import argparse
import os
import re
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from stream_client import (CLOSE, CREATE, CREDIT, DELETE, METADATA_UPDATE, STORE_OFFSET,  # noqa: E402
                           UNSUBSCRIBE, Raw, s16)


def scenario(port, name):
    """(step, observation) pairs; `name` is this run's stream, the same on both brokers."""
    out = []
    r = Raw(port)
    create = lambda stream, *args: r.code(CREATE, s16(stream) + struct.pack(">I", len(args) // 2)
                                          + b"".join(s16(a) for a in args))
    out.append(("create", create(name)))
    out.append(("create again", create(name)))
    out.append(("create with other arguments", create(name, "max-age", "1h")))
    out.append(("create amq.", create("amq.x")))
    out.append(("create empty name", create("")))
    out.append(("create initial-cluster-size 0", create(name + "-y", "initial-cluster-size", "0")))
    out.append(("create unknown argument", create(name + "-z", "foo", "bar")))
    out.append(("delete missing", r.code(DELETE, s16(name + "-missing"))))
    out.append(("subscribe missing", r.subscribe(0, name + "-missing")))
    out.append(("declare publisher on missing", r.declare_publisher(0, "", name + "-missing")))
    out.append(("subscribe", r.subscribe(0, name)))
    out.append(("subscribe same id", r.subscribe(0, name)))
    out.append(("unsubscribe unknown", r.code(UNSUBSCRIBE, struct.pack(">B", 5))))
    out.append(("query sequence on missing", r.query_seq("x", name + "-missing")))
    out.append(("query sequence of unknown reference", r.query_seq("x", name)))
    out.append(("query offset on missing", r.query_offset("x", name + "-missing")))
    out.append(("query offset of unknown reference", r.query_offset("x", name)))
    out.append(("declare publisher", r.declare_publisher(1, "ref", name)))
    out.append(("declare publisher, id taken", r.declare_publisher(1, "", name)))
    out.append(("declare publisher, reference taken", r.declare_publisher(2, "ref", name)))
    r.publish(7, [(1, b"x"), (2, b"y")])
    out.append(("publish through unknown publisher", r.confirms(2)))
    r.publish(1, [(1, b"x"), (2, b"y")])
    out.append(("publish", r.confirms(2)))
    r.publish(1, [(2, b"y"), (3, b"z")])
    out.append(("publish, one id again", r.confirms(2)))
    out.append(("query sequence", r.query_seq("ref", name)))
    r.send(STORE_OFFSET, s16("c") + s16(name) + struct.pack(">Q", 1))
    out.append(("query stored offset", r.query_offset("c", name)))
    r.send(CREDIT, struct.pack(">BH", 9, 1))
    out.append(("credit to unknown subscription", r.next_of(CREDIT | 0x8000)))
    out.append(("delete", r.code(DELETE, s16(name))))
    out.append(("the subscriber hears", r.next_of(METADATA_UPDATE)))
    out.append(("unsubscribe after delete", r.code(UNSUBSCRIBE, struct.pack(">B", 0))))
    for other in (name + "-y", name + "-z"):
        r.code(DELETE, s16(other))
    out.append(("wrong password", Raw(port, login=False).login("guest", "nope", "/")))
    out.append(("unknown vhost", Raw(port, login=False).login("guest", "guest", "no-such-vhost")))
    u = Raw(port)
    u.send(0x7777, struct.pack(">I", 1))
    out.append(("unknown command: the broker's close", struct.unpack(">IH", u.next_of(CLOSE)[:6])))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    args = ap.parse_args()
    name = f"stream-diff-{int(time.time())}"
    runs = [scenario(int(x.rsplit(":", 1)[1]), name) for x in (args.a, args.b)]
    differ = [(step, a, b) for (step, a), (_, b) in zip(*runs) if a != b]
    for step, a, b in differ:
        print(f"DIFFERENT {step}: Hare {a!r}, RabbitMQ {b!r}")
    print(f"stream protocol: {len(runs[0]) - len(differ)} of {len(runs[0])} steps agree")
    return 1 if differ or len(runs[0]) != len(runs[1]) else 0


if __name__ == "__main__":
    sys.exit(main())
