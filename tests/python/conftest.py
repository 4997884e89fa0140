"""Starts the real hare binary on an ephemeral loopback port for each test module."""
import atexit
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time

import pika
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARE_BIN = os.environ.get("HARE_BIN", os.path.join(ROOT, "target", "release", "hare"))
# Brokers started by the tests, several at once, listen for MQTT and the stream protocol only
# when a test asks for it with --mqtt-port, --stream-port and the like (the defaults, 1883, 8883,
# 15675, 15676, 5552 and 5551, would be taken by the first).
for _port in ("HARE_MQTT_PORT", "HARE_MQTT_TLS_PORT", "HARE_MQTT_WS_PORT", "HARE_MQTT_WSS_PORT", "HARE_STREAM_PORT",
              "HARE_STREAM_TLS_PORT"):
    os.environ.setdefault(_port, "0")


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Hare:
    """A hare process; `restart()` starts it again on the same data directory."""

    def __init__(self, extra_args=(), data_dir=None, open_files=None):
        """`open_files`: a limit on open files (soft and hard) for the broker process."""
        self.dir = tempfile.mkdtemp(prefix="hare-test-")
        # Logs and data stay for the whole run (tests read them after a stop) and go with it.
        atexit.register(shutil.rmtree, self.dir, True)
        self.data_dir = data_dir or os.path.join(self.dir, "data")
        self.extra_args = list(extra_args)
        self.open_files = open_files
        self.starts = 0
        self._start()

    def _start(self):
        self.starts += 1
        self.log_path = os.path.join(self.dir, f"hare-{self.starts}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [HARE_BIN, *([] if "--port" in self.extra_args else ["--port", "0"]), "--management-port", "0",
             "--data-dir", self.data_dir, "--log", "info", *self.extra_args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit if self.open_files else None,
        )
        self.port = wait_for(self._port, what="hare to listen")
        self.http_port = wait_for(self._http_port, what="the management API to listen")

    def _limit(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def kill(self):
        """SIGKILL, as a crash."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def restart(self, graceful=True):
        if graceful:
            self.stop()
        else:
            self.kill()
        self._start()

    def _port(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"hare exited early:\n{self.read_log()}")
        m = re.search(r"AMQP listening on 127\.0\.0\.1:(\d+)", self.read_log())
        return int(m.group(1)) if m else None

    def _http_port(self):
        m = re.search(r"HTTP API listening on 127\.0\.0\.1:(\d+)", self.read_log())
        return int(m.group(1)) if m else None

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()

    def params(self, **kw):
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port, **kw)

    def connect(self, **kw):
        return pika.BlockingConnection(self.params(**kw))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def module_hare(*extra_args):
    """A module's `hare` fixture for a broker started with `extra_args`."""

    @pytest.fixture(scope="module", name="hare")
    def fixture():
        h = Hare(extra_args=extra_args)
        yield h
        h.stop()

    return fixture


hare = module_hare()


@pytest.fixture
def fresh_hare():
    h = Hare()
    yield h
    h.stop()


@pytest.fixture
def conn(hare):
    c = hare.connect()
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()
