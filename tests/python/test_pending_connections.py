"""Connections that never log in are bounded per source address: past
max_pending_connections_per_source such sockets from one IP, more from it are closed at once,
while other sources and the same source's later logins are served."""
import socket

from conftest import Hare, wait_for

LIMIT = 20


def amqp_start(port, source="127.0.0.1", timeout=5):
    """Bytes the broker answers the protocol header with ('' when it closed the socket)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        try:
            return s.recv(7)
        except (ConnectionResetError, socket.timeout):
            return b""
    finally:
        s.close()


def test_a_source_cannot_hold_more_than_its_share_of_unauthenticated_sockets(tmp_path):
    config = tmp_path / "hare.toml"
    config.write_text(f"max_pending_connections_per_source = {LIMIT}\n")
    h = Hare(extra_args=["--config", str(config)])
    flood = []
    try:
        # Sockets that send the protocol header and then nothing: each waits for its login.
        for _ in range(LIMIT):
            s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            assert s.recv(1) == b"\x01"  # connection.start: the broker took it
            flood.append(s)
        # One more from the same address is closed without a connection.start.
        assert amqp_start(h.port) == b""
        wait_for(lambda: "have not logged in yet" in h.read_log(), what="the refusal in the log")
        # Another source is served as usual.
        assert amqp_start(h.port, source="127.0.0.2")[:1] == b"\x01"
        # A connection that logs in leaves the count: once the flood is gone, pika logs in
        # LIMIT + 5 times in a row from the same address.
        for s in flood:
            s.close()
        flood.clear()

        def served():
            return amqp_start(h.port)[:1] == b"\x01"
        wait_for(served, what="the source to be served again")
        conns = [h.connect() for _ in range(LIMIT + 5)]
        for c in conns:
            assert c.is_open
            c.close()
    finally:
        for s in flood:
            s.close()
        h.stop()
