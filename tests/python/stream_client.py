"""A stream protocol client on a raw socket, for tests that need the frames themselves (the
order of responses, credit, malformed input) and for the differential test against RabbitMQ."""
import socket
import struct
import time

OK, STREAM_DOES_NOT_EXIST, SUB_EXISTS, SUB_MISSING, STREAM_EXISTS, STREAM_NOT_AVAILABLE = 1, 2, 3, 4, 5, 6
AUTH_FAILURE, VHOST_ACCESS_FAILURE, UNKNOWN_FRAME, FRAME_TOO_LARGE = 8, 12, 13, 14
ACCESS_REFUSED, PRECONDITION_FAILED, PUBLISHER_MISSING, NO_OFFSET = 16, 17, 18, 19
DECLARE_PUBLISHER, PUBLISH, PUBLISH_CONFIRM, PUBLISH_ERROR, QUERY_SEQ, SUBSCRIBE, DELIVER = 1, 2, 3, 4, 5, 7, 8
CREDIT, STORE_OFFSET, QUERY_OFFSET, UNSUBSCRIBE, CREATE, DELETE, METADATA_UPDATE = 9, 10, 11, 12, 13, 14, 16
CLOSE = 22
CONSUMER_UPDATE = 26
ROUTE, PARTITIONS, CREATE_SUPER, DELETE_SUPER = 24, 25, 29, 30


def s16(text):
    b = text.encode()
    return struct.pack(">H", len(b)) + b


class Raw:
    """A stream protocol client on a raw socket: frames in and out, nothing hidden."""

    def __init__(self, port, user="guest", password="guest", vhost="/", login=True):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.corr = 0
        self.pending = []
        # The version of the last frame read of each key.
        self.versions = {}
        if login:
            assert self.login(user, password, vhost) == OK

    def send(self, key, body=b"", version=1):
        self.s.sendall(struct.pack(">IHH", len(body) + 4, key, version) + body)

    def read(self, timeout=10):
        """The next frame: (key, payload); None once the broker closed the socket."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + size:
                    frame, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
                    (key, version) = struct.unpack(">HH", frame[:4])
                    self.versions[key] = version
                    return key, frame[4:]
            try:
                data = self.s.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data

    def request(self, key, body=b""):
        self.corr += 1
        self.send(key, struct.pack(">I", self.corr) + body)
        return self.corr

    def response(self, key):
        """The payload after the correlation id of the response to `key`; other frames wait."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = self.read()
            assert f is not None, "the broker closed the connection"
            if f[0] == key | 0x8000:
                return f[1][4:]
            self.pending.append(f)
        raise AssertionError(f"no response to {key}")

    def code(self, key, body=b""):
        self.request(key, body)
        return struct.unpack(">H", self.response(key)[:2])[0]

    def next_of(self, key, timeout=10):
        for i, f in enumerate(self.pending):
            if f[0] == key:
                return self.pending.pop(i)[1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            f = self.read(timeout)
            assert f is not None, "the broker closed the connection"
            if f[0] == key:
                return f[1]
            self.pending.append(f)
        raise AssertionError(f"no frame {key}")

    def login(self, user, password, vhost):
        self.request(17, struct.pack(">I", 0))
        self.response(17)
        self.request(18)
        self.response(18)
        self.request(19, s16("PLAIN") + struct.pack(">I", len(user) + len(password) + 2) + b"\0" + user.encode() + b"\0" + password.encode())
        (code,) = struct.unpack(">H", self.response(19)[:2])
        if code != OK:
            return code
        self.next_of(20)  # the broker's tune
        self.send(20, struct.pack(">II", 1048576, 0))
        return self.code(21, s16(vhost))

    def exchange_versions(self, versions):
        """Exchanges command versions, each (key, min, max); returns the broker's list."""
        self.request(27, struct.pack(">I", len(versions)) + b"".join(struct.pack(">HHH", *v) for v in versions))
        p = self.response(27)
        (code, n) = struct.unpack(">HI", p[:6])
        assert code == OK
        return [struct.unpack(">HHH", p[6 + 6 * i:12 + 6 * i]) for i in range(n)]

    def stream_stats(self, stream):
        self.request(28, s16(stream))
        p = self.response(28)
        (code, n), p, stats = struct.unpack(">HI", p[:6]), p[6:], {}
        for _ in range(n):
            (size,) = struct.unpack(">H", p[:2])
            name, p = p[2:2 + size].decode(), p[2 + size:]
            stats[name], p = struct.unpack(">q", p[:8])[0], p[8:]
        return stats

    def declare_publisher(self, pid, reference, stream):
        return self.code(DECLARE_PUBLISHER, struct.pack(">B", pid) + s16(reference) + s16(stream))

    def publish(self, pid, messages):
        body = struct.pack(">BI", pid, len(messages))
        for pub_id, data in messages:
            body += struct.pack(">QI", pub_id, len(data)) + data
        self.send(PUBLISH, body)

    def publish_v2(self, pid, messages):
        """Version 2 of publish: (publishing id, filter value or None, data) each."""
        body = struct.pack(">BI", pid, len(messages))
        for pub_id, value, data in messages:
            body += struct.pack(">Q", pub_id) + (s16(value) if value is not None else struct.pack(">h", -1))
            body += struct.pack(">I", len(data)) + data
        self.send(PUBLISH, body, version=2)

    def confirms(self, n):
        """Publishing ids confirmed until `n` have come; errors as (id, code)."""
        ids, errors = [], []
        while len(ids) + len(errors) < n:
            f = self.read()
            assert f is not None, "the broker closed the connection"
            key, p = f
            if key == PUBLISH_CONFIRM:
                (count,) = struct.unpack(">I", p[1:5])
                ids += list(struct.unpack(f">{count}Q", p[5:5 + 8 * count]))
            elif key == PUBLISH_ERROR:
                (count,) = struct.unpack(">I", p[1:5])
                for i in range(count):
                    errors.append(struct.unpack(">QH", p[5 + 10 * i:15 + 10 * i]))
            else:
                self.pending.append(f)
        return ids, errors

    def subscribe(self, sid, stream, offset_type=1, offset=0, credit=10, properties=None):
        spec = struct.pack(">H", offset_type) + (struct.pack(">Q", offset) if offset_type in (4, 5) else b"")
        props = struct.pack(">I", len(properties or {})) + b"".join(s16(k) + s16(v) for k, v in (properties or {}).items())
        return self.code(SUBSCRIBE, struct.pack(">B", sid) + s16(stream) + spec + struct.pack(">H", credit) + props)

    def consumer_update(self, timeout=10):
        """The broker's next consumer update (single active consumer): (correlation id,
        subscription, active)."""
        p = self.next_of(CONSUMER_UPDATE, timeout)
        return struct.unpack(">IBB", p[:6])

    def answer_update(self, corr, offset_type=1, offset=0):
        spec = struct.pack(">H", offset_type) + (struct.pack(">Q", offset) if offset_type in (4, 5) else b"")
        self.send(CONSUMER_UPDATE | 0x8000, struct.pack(">IH", corr, OK) + spec)

    def deliver(self, timeout=10):
        """The next chunk: (first offset, [messages])."""
        p = self.next_of(DELIVER, timeout)
        _sid, _magic, _type, entries, _records, _ts, _epoch, first, _crc, _len, _trailer, _res = struct.unpack(
            ">BBBHIqQQIIII", p[:49])
        data, messages = p[49:], []
        for _ in range(entries):
            (size,) = struct.unpack(">I", data[:4])
            messages.append(data[4:4 + size])
            data = data[4 + size:]
        return first, messages

    def deliver_of(self, timeout=10):
        """The next chunk's subscription and first offset."""
        p = self.next_of(DELIVER, timeout)
        sid, first = p[0], struct.unpack(">Q", p[25:33])[0]
        return sid, first

    def query_seq(self, reference, stream):
        self.request(QUERY_SEQ, s16(reference) + s16(stream))
        return struct.unpack(">HQ", self.response(QUERY_SEQ))

    def query_offset(self, reference, stream):
        self.request(QUERY_OFFSET, s16(reference) + s16(stream))
        return struct.unpack(">HQ", self.response(QUERY_OFFSET))

    def close(self):
        self.s.close()

    def strings_response(self, key):
        body = self.response(key)
        (code, count) = struct.unpack(">HI", body[:6])
        rest, out = body[6:], []
        for _ in range(count):
            (n,) = struct.unpack(">H", rest[:2])
            out.append(rest[2:2 + n].decode())
            rest = rest[2 + n:]
        return code, out

    def partitions(self, super_stream):
        self.request(PARTITIONS, s16(super_stream))
        return self.strings_response(PARTITIONS)

    def route(self, routing_key, super_stream):
        self.request(ROUTE, s16(routing_key) + s16(super_stream))
        return self.strings_response(ROUTE)

    def create_super(self, name, partitions, keys):
        strings = lambda xs: struct.pack(">I", len(xs)) + b"".join(s16(x) for x in xs)
        return self.code(CREATE_SUPER, s16(name) + strings(partitions) + strings(keys) + struct.pack(">I", 0))
