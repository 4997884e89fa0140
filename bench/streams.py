"""The stream rows of the benchmark, over AMQP 0-9-1: Hare against RabbitMQ 3.10 (streams are
part of its core), each broker started afresh for each run, loaded by the same `hare perf
--stream`.

- Rows 23-24: confirmed publishes to a stream (one publisher, 256 awaiting confirms, no
  consumer), 100 B and 1 KiB messages: published msg/s.
- Row 25: one consumer replaying STREAM_MESSAGES messages of 100 B from `first` (manual acks,
  prefetch 1,000), after a publisher filled the stream: consumed msg/s.
- Row 26: ten consumers replaying the same stream from `first` at once: consumed msg/s, all
  together.

Beside each figure, the load generator's CPU in percent of one core over the measured
window: on 2 cores it is not the bottleneck while it stays clearly under 100 %.
Rounds alternate the brokers and the mean is shown."""
import os

from compare import DURATION, ROUNDS, mean, perf, want

MESSAGES = int(os.environ.get("STREAM_MESSAGES", "1000000"))
STREAM = ["--stream", "--queues", 1]


def fill(broker, prefix, size):
    """Publishes MESSAGES confirmed messages to the stream `prefix`-0 (kept: no consumers)."""
    perf(broker, "--producers", 1, "--consumers", 0, "--count", MESSAGES, "--confirm", 256, "--size", size,
         "--prefix", prefix, "--duration", 600, *STREAM, timeout=900)


def replay(broker, prefix, consumers):
    return perf(broker, "--producers", 0, "--consumers", consumers, "--count", MESSAGES * consumers,
                "--offset", "first", "--ack", "manual", "--prefetch", 1000, "--prefix", prefix,
                "--duration", 600, *STREAM, timeout=900)


def alternate(brokers, label, measure, log):
    """Runs `measure(broker, round)` on each broker, started afresh, ROUNDS times in turn;
    returns each broker's mean figure and Hare's mean generator CPU."""
    got = {b.name: [] for b in brokers}
    for r in range(ROUNDS):
        for b in brokers:
            b.start()
            try:
                figure, cpu = measure(b, r)
            finally:
                b.stop()
            got[b.name].append((figure, cpu))
            log(f"{label} | {b.name} round {r + 1}: {figure:.0f}/s, generator CPU {cpu:.0f} %")
    return {name: mean([x[0] for x in v]) for name, v in got.items()}, mean([x[1] for x in got["Hare"]])


def run(brokers, rows, log):
    """Appends the stream rows wanted to `rows`."""
    for row, size in [(23, 100), (24, 1024)]:
        if not want(row):
            continue

        def publish(b, r):
            s = perf(b, "--producers", 1, "--consumers", 0, "--confirm", 256, "--size", size,
                     "--duration", DURATION, "--prefix", f"sp{r}", *STREAM)
            return s["published_per_sec"], s.get("cpu_percent", 0.0)

        m, cpu = alternate(brokers, f"{row}. stream publish {size} B", publish, log)
        h, q = m["Hare"], m["RabbitMQ"]
        rows.append((f"{row}. stream, 1 publisher, {size} B, confirms (window 256)",
                     f"published msg/s (generator CPU {cpu:.0f} %)", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
    for row, consumers in [(25, 1), (26, 10)]:
        if not want(row):
            continue

        def replayed(b, r):
            fill(b, f"sr{r}", 100)
            s = replay(b, f"sr{r}", consumers)
            return s["consumed_per_sec"], s.get("cpu_percent", 0.0)

        m, cpu = alternate(brokers, f"{row}. stream replay x{consumers}", replayed, log)
        h, q = m["Hare"], m["RabbitMQ"]
        who = "one consumer" if consumers == 1 else f"{consumers} consumers at once"
        rows.append((f"{row}. stream of {MESSAGES:,} messages of 100 B replayed from first by {who}",
                     f"consumed msg/s (generator CPU {cpu:.0f} %)", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
