"""The stream protocol rows of the benchmark: Hare against RabbitMQ 3.10 with its
rabbitmq_stream plugin, each broker started afresh for each run, loaded by the same `hare perf
--uri rabbitmq-stream://...` (messages as the generator writes them; both brokers store them
so).

- Rows 27-28: confirmed publishes (one publisher, WINDOW publishes awaiting their confirm, the
  stream clients' usual 10,000; no consumer), 100 B and 1 KiB: published msg/s.
- Row 29: one consumer replaying STREAM_MESSAGES messages of 100 B from `first` (credit of 10
  chunks), after a publisher filled the stream: consumed msg/s.
- Row 30: ten consumers replaying the same stream from `first` at once: consumed msg/s, all
  together. Reading every message of ten replays took the generator a whole core (98 %), so
  here its consumers `--skim`: they read each chunk's header and first message and let the
  kernel drop the rest of the chunk unread, counting messages from the headers (the same for
  both brokers).
- Row 31: in a stream of STREAM_GB (10) gigabytes of 1 KiB messages, the time from a subscribe
  at a timestamp in its middle to its first chunk (a raw client; the median of 20 tries, the
  first after the page cache was emptied): milliseconds, lower is better (the ratio column is
  RabbitMQ's time over Hare's).
- Row 32: the broker's peak RSS while one consumer replays that whole stream from `first`,
  with a memory limit of LARGE_LIMIT_MIB (1,024) MiB on both: MiB, lower is better (ratio
  RabbitMQ over Hare).

Beside each figure, the load generator's CPU in percent of one core over the measured window:
on 2 cores it is not the bottleneck while it stays clearly under 100 %. Rounds alternate the
brokers and the mean is shown."""
import os
import shutil
import statistics
import struct
import time

import compare
from compare import DURATION, PeakRss, rss_kib, wait_port, want
from stream_client import DELIVER, OK, SUBSCRIBE, UNSUBSCRIBE, Raw, s16
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
    for row, consumers, skim in [(29, 1, ()), (30, 10, ("--skim",))]:
        if not want(row):
            continue

        def replayed(b, r):
            prefix = f"pr{r}"
            perf(b, "--producers", 1, "--consumers", 0, "--count", MESSAGES, "--confirm", WINDOW, "--size", 100,
                 "--prefix", prefix, "--queues", 1, "--keep", "--duration", 600, timeout=900)
            s = perf(b, "--producers", 0, "--consumers", consumers, "--count", MESSAGES * consumers,
                     "--offset", "first", "--prefix", prefix, "--queues", 1, "--duration", 600, *skim, timeout=900)
            return s["consumed_per_sec"], s.get("cpu_percent", 0.0)

        m, cpu = alternate(brokers, f"{row}. stream protocol replay x{consumers}", replayed, log)
        h, q = m["Hare"], m["RabbitMQ"]
        who = "one consumer" if consumers == 1 else f"{consumers} consumers at once"
        if skim:
            who += " (skimming chunks)"
        rows.append((f"{row}. stream protocol: {MESSAGES:,} messages of 100 B replayed from first by {who}",
                     f"consumed msg/s (generator CPU {cpu:.0f} %)", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
    if want(31) or want(32):
        large(brokers, rows, log)


# Rows 31-32: a stream of STREAM_GB gigabytes (1 KiB messages), on brokers whose memory limit
# (LARGE_LIMIT_MIB) is a tenth of it.
STREAM_GB = float(os.environ.get("STREAM_GB", "10"))
LARGE_LIMIT_MIB = int(os.environ.get("LARGE_LIMIT_MIB", "1024"))
SEEKS = 20


def drop_page_cache():
    """Empties the page cache (root only), so that the first seek reads the disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def seek_times(broker, stream, timestamp_ms):
    """Milliseconds from a subscribe at `timestamp_ms` to the first bytes of its first chunk,
    SEEKS times (the first after the page cache was emptied, when this may empty it), each on
    a fresh subscription; and the first offset delivered."""
    cold = drop_page_cache()
    r = Raw(broker.stream_port)
    times, offsets = [], []
    try:
        for i in range(SEEKS):
            body = struct.pack(">B", i) + s16(stream) + struct.pack(">HqHI", 5, timestamp_ms, 1, 0)
            started = time.perf_counter()
            r.request(SUBSCRIBE, body)
            # The clock stops at the deliver frame's first bytes (its key and the chunk's
            # first offset), before the client reads the rest of the chunk.
            first = None
            while first is None:
                if len(r.buf) < 4 + 2:
                    r.buf += r.s.recv(65536)
                    continue
                size, key = struct.unpack(">IH", r.buf[:6])
                if key != DELIVER:
                    while len(r.buf) < 4 + size:
                        r.buf += r.s.recv(65536)
                    r.buf = r.buf[4 + size:]
                    continue
                while len(r.buf) < 4 + 4 + 1 + 1 + 1 + 2 + 4 + 8 + 8 + 8:
                    r.buf += r.s.recv(65536)
                times.append((time.perf_counter() - started) * 1000)
                (first,) = struct.unpack(">Q", r.buf[4 + 4 + 1 + 1 + 1 + 2 + 4 + 8 + 8:4 + 4 + 1 + 1 + 1 + 2 + 4 + 8 + 8 + 8])
                r.deliver(timeout=60)
            offsets.append(first)
            r.code(UNSUBSCRIBE, struct.pack(">B", i))
            r.pending.clear()
    finally:
        r.close()
    return times, offsets, cold


def large(brokers, rows, log):
    messages = int(STREAM_GB * 1e9 / 1024)
    seek, rss = {}, {}
    for b in brokers:
        b.start(memory_limit_mib=LARGE_LIMIT_MIB)
        try:
            began = time.time()
            s = perf(b, "--producers", 1, "--consumers", 0, "--count", messages, "--confirm", WINDOW, "--size", 1024,
                     "--prefix", "large", "--queues", 1, "--keep", "--duration", 3600, timeout=4000)
            ended = time.time()
            log(f"31-32 | {b.name}: {messages:,} messages of 1 KiB stored at {s['published_per_sec']:,.0f}/s")
            if want(31):
                middle = int((began + ended) / 2 * 1000)
                times, offsets, cold = seek_times(b, "large-0", middle)
                seek[b.name] = (statistics.median(times), times[0], cold, offsets[0])
                log(f"31 | {b.name}: from the middle's timestamp: first chunk at offset {offsets[0]:,}; "
                    f"first try {times[0]:.1f} ms{' (page cache emptied)' if cold else ''}, median {seek[b.name][0]:.2f} ms, "
                    f"max {max(times):.1f} ms")
            if want(32):
                pid = b.pid()
                before = rss_kib(pid)
                peak = PeakRss(pid)
                s = perf(b, "--producers", 0, "--consumers", 1, "--count", messages, "--offset", "first",
                         "--prefix", "large", "--queues", 1, "--duration", 3600, timeout=4000)
                rss[b.name] = (before / 1024, peak.done() / 1024, s["consumed_per_sec"])
                log(f"32 | {b.name}: RSS {rss[b.name][0]:.0f} MiB before, {rss[b.name][1]:.0f} MiB at most while "
                    f"replaying ({s['consumed_per_sec']:,.0f} msg/s)")
        finally:
            b.stop()
            shutil.rmtree(b.dir, ignore_errors=True)
    if want(31):
        (h, hf, cold, _), (q, qf, _, _) = seek["Hare"], seek["RabbitMQ"]
        rows.append((f"31. stream protocol: first message from a timestamp in the middle of a {STREAM_GB:g} GB stream",
                     f"ms, median of {SEEKS} (first try{', page cache emptied' if cold else ''}: {hf:.1f} / {qf:.1f})",
                     f"{h:.2f}", f"{q:.2f}", f"{q / h:.2f}"))
    if want(32):
        (hb, hp, hr), (qb, qp, qr) = rss["Hare"], rss["RabbitMQ"]
        rows.append((f"32. stream protocol: {STREAM_GB:g} GB replayed from first by one consumer, "
                     f"memory limit {LARGE_LIMIT_MIB} MiB",
                     f"peak RSS MiB (before: {hb:.0f} / {qb:.0f}; msg/s {hr:,.0f} / {qr:,.0f})",
                     f"{hp:.0f}", f"{qp:.0f}", f"{qp / hp:.2f}"))
