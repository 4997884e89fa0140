"""The stream protocol rows of the benchmark: Hare against RabbitMQ 3.10 with its
rabbitmq_stream plugin, each broker started afresh for each run, loaded by the same `hare perf
--uri rabbitmq-stream://...` (messages as the generator writes them; both brokers store them
so).

- Rows 27-28: confirmed publishes (one publisher, WINDOW publishes awaiting their confirm, the
  stream clients' usual 10,000; no consumer), 100 B and 1 KiB: published msg/s.
- Row 29: one consumer replaying STREAM_MESSAGES messages of 100 B from `first` (credit of 10
  chunks), after a publisher filled the stream: consumed msg/s.
- Row 30: ten consumers replaying the same stream from `first` at once: consumed msg/s, all
  together.

Beside each figure, the load generator's CPU in percent of one core over the measured window:
on 2 cores it is not the bottleneck while it stays clearly under 100 %. Rounds alternate the
brokers and the mean is shown."""
import time

import compare
from compare import DURATION, wait_port, want
from streams import MESSAGES, alternate

WINDOW = 10_000


class HareStream(compare.Hare):
    stream_port = 5741


class RabbitStream(compare.RabbitMQ):
    stream_port = 5742
    plugins = ("rabbitmq_stream",)
    conf = (f"stream.listeners.tcp.1 = {stream_port}",)

    def start(self, *a, **kw):
        took = super().start(*a, **kw)
        # The plugin opens its port after AMQP's.
        if not wait_port(self.stream_port, time.monotonic() + 120):
            raise RuntimeError("RabbitMQ does not listen for the stream protocol")
        return took


def perf(broker, *args, timeout=None):
    return compare.perf(broker, *args, timeout=timeout,
                        uri=f"rabbitmq-stream://guest:guest@127.0.0.1:{broker.stream_port}/%2f")


def run(rows, log):
    """Appends the stream protocol rows wanted to `rows`."""
    brokers = [HareStream(), RabbitStream()]
    for row, size in [(27, 100), (28, 1024)]:
        if not want(row):
            continue

        def publish(b, r):
            s = perf(b, "--producers", 1, "--consumers", 0, "--confirm", WINDOW, "--size", size,
                     "--duration", DURATION, "--prefix", f"pp{r}", "--queues", 1)
            return s["published_per_sec"], s.get("cpu_percent", 0.0)

        m, cpu = alternate(brokers, f"{row}. stream protocol publish {size} B", publish, log)
        h, q = m["Hare"], m["RabbitMQ"]
        rows.append((f"{row}. stream protocol, 1 publisher, {size} B, confirms (window {WINDOW:,})",
                     f"published msg/s (generator CPU {cpu:.0f} %)", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
    for row, consumers in [(29, 1), (30, 10)]:
        if not want(row):
            continue

        def replayed(b, r):
            prefix = f"pr{r}"
            perf(b, "--producers", 1, "--consumers", 0, "--count", MESSAGES, "--confirm", WINDOW, "--size", 100,
                 "--prefix", prefix, "--queues", 1, "--keep", "--duration", 600, timeout=900)
            s = perf(b, "--producers", 0, "--consumers", consumers, "--count", MESSAGES * consumers,
                     "--offset", "first", "--prefix", prefix, "--queues", 1, "--duration", 600, timeout=900)
            return s["consumed_per_sec"], s.get("cpu_percent", 0.0)

        m, cpu = alternate(brokers, f"{row}. stream protocol replay x{consumers}", replayed, log)
        h, q = m["Hare"], m["RabbitMQ"]
        who = "one consumer" if consumers == 1 else f"{consumers} consumers at once"
        rows.append((f"{row}. stream protocol: {MESSAGES:,} messages of 100 B replayed from first by {who}",
                     f"consumed msg/s (generator CPU {cpu:.0f} %)", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
