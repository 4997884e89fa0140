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


def rss_kib(pid):
    """A process's resident memory, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """Samples a process's resident memory every 20 ms until done(); returns the peak in KiB."""

    def __init__(self, pid):
        import threading

        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                pass  # the process is gone (a broker being restarted)
            time.sleep(0.02)

    def done(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def api(port, method, path, body=None, user=("guest", "guest")):
    """A request to the management API on `port`: (status, decoded JSON body or None)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, raw


def get_all(connection, queue):
    """Takes every ready message of `queue` with basic.get (auto-ack): [(props, body)]."""
    ch = connection.channel()
    out = []
    while True:
        m, p, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append((p, b))


def free_ports(n):
    """n loopback ports free at this moment (bound, read, released)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
