"""Scale benchmark: what a publish costs as the number of things grows, Hare and RabbitMQ side
by side on this machine. Writes bench/results/<date>-scale.md.

Rows so far:
- topic routing, 1 publisher -> 1 consumer through a topic exchange, 64 B, with 1 binding and
  with N more bindings (`other.<i>.#`, none matching), N = 10,000 and 100,000;
- broker memory (RSS) per topic binding, from the same runs;
- broker memory per idle queue: QUEUES non-durable queues declared on a fresh broker;
- durable definitions: DURABLE durable queues, each bound to amq.topic, through one channel
  (each declare and bind waits for its -ok), the rate over the first and the last tenth, and
  the time a restart with all of them takes until the port accepts connections;
- publish latency (end to end p99 at 20,000 msg/s) quiet, and while another connection
  declares durable queues (at least STORM of them) for the whole run;
- large messages: 1 -> 1 with 64 KiB and 1 MiB bodies, the rate and the broker's CPU time
  (user + system, from /proc) per message, beside the kernel's floor: the CPU per message of
  a bare relay between two loopback sockets (examples/tcp_floor.rs), which no broker that
  receives and sends each message over TCP can go below; LARGE_ROUNDS alternated rounds.
Usage: bench/scale.sh   (SECTIONS=topic,queues,durable,storm,large BINDINGS=10000,100000
QUEUES=20000 DURABLE=20000 STORM=3000 DURATION=10 LARGE_ROUNDS=3)"""
import datetime
import json
import os
import subprocess
import sys
import time

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (broker launchers and the perf runner)

DURATION = float(os.environ.get("DURATION", "10"))
BINDINGS = [int(x) for x in os.environ.get("BINDINGS", "10000,100000").split(",")]
QUEUES = int(os.environ.get("QUEUES", "20000"))
DURABLE = int(os.environ.get("DURABLE", "20000"))
STORM = int(os.environ.get("STORM", "3000"))
# A broker that has not declared DURABLE queues after this many seconds stops there; its
# rows then name the tenths it completed and how many queues it declared.
DURABLE_DEADLINE = float(os.environ.get("DURABLE_DEADLINE", "1200"))
SECTIONS = os.environ.get("SECTIONS", "topic,queues,durable,storm,large").split(",")
LARGE = [64 * 1024, 1024 * 1024]
# The large-message rows are the noisiest (each broker's CPU per message moves by a tenth from
# run to run), so they run LARGE_ROUNDS rounds, alternating the brokers, and show the mean.
LARGE_ROUNDS = int(os.environ.get("LARGE_ROUNDS", "3"))


def settled_rss(broker):
    """The broker's RSS in KiB once it stopped changing (at most 5 s)."""
    last, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        now = compare.rss_kib(broker.pid())
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


def declare_queues(broker, n):
    """Declares n non-durable queues through one channel (nowait, a round trip every 1,000)."""
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = c.channel()
    for i in range(n):
        ch._impl.queue_declare(f"idle-{i}", callback=None)
        if i % 1000 == 999:
            ch.queue_declare(f"idle-{i}", passive=True)
    ch.queue_declare(f"idle-{n - 1}", passive=True)
    return c


def add_bindings(broker, n):
    """Binds a queue to perf's topic exchange with n patterns that match nothing perf sends."""
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = c.channel()
    ch.exchange_declare("scale-topic", "topic")
    ch.queue_declare("scale-other")
    started = time.monotonic()
    for i in range(n):
        # nowait binds, with a round trip every 1,000 so errors surface and buffers stay small.
        ch._impl.queue_bind("scale-other", "scale-topic", routing_key=f"other.{i}.#", callback=None)
        if i % 1000 == 999:
            ch.queue_declare("scale-other", passive=True)
    ch.queue_declare("scale-other", passive=True)
    c.close()
    return time.monotonic() - started


def durable_declares(broker, n):
    """Declares n durable queues, each bound to amq.topic, through one channel, waiting for
    each -ok, for DURABLE_DEADLINE seconds at most; returns the rate (queues per second) over
    each tenth completed, and how many queues were declared."""
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = c.channel()
    tenth = max(1, n // 10)
    rates, last = [], time.monotonic()
    deadline = last + DURABLE_DEADLINE
    declared = 0
    for i in range(n):
        ch.queue_declare(f"durable-{i}", durable=True)
        ch.queue_bind(f"durable-{i}", "amq.topic", routing_key=f"durable.{i}")
        declared = i + 1
        if declared % tenth == 0:
            now = time.monotonic()
            rates.append(tenth / (now - last))
            last = now
            if now > deadline:
                break
    c.close()
    return rates, declared


def storm(broker, stop, count):
    """Declares STORM durable queues on its own connection, spread evenly over DURATION
    seconds (each waits for its declare-ok), so both brokers get the same storm beside the
    same publish load; stops early if `stop` is set. A broker slower than the pace declares
    fewer, and `count` says how many."""
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = c.channel()
    start, interval = time.monotonic(), DURATION / STORM
    while not stop.is_set() and count[0] < STORM:
        wait = start + count[0] * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        ch.queue_declare(f"storm-{count[0]}", durable=True)
        count[0] += 1
    c.close()


def latency_p99(broker, with_storm):
    """End-to-end p99 (ms) of 1 -> 1 at 20,000 msg/s; with a declare storm beside it, also the
    number of durable queues declared meanwhile."""
    import threading

    stop, count = threading.Event(), [0]
    t = threading.Thread(target=storm, args=(broker, stop, count)) if with_storm else None
    if t:
        t.start()
    try:
        s = compare.perf(broker, "--rate", 20000, "--size", 64, "--duration", DURATION, "--prefix", "lat")
    finally:
        stop.set()
        if t:
            t.join()
    return s["e2e_latency"]["p99_ms"], count[0]


def cpu_seconds(pid):
    """User + system CPU time of a process (and its finished children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def large(broker, size):
    """1 -> 1 with `size`-byte bodies: (consumed msg/s, broker CPU µs per message)."""
    before = cpu_seconds(broker.pid())
    s = compare.perf(broker, "--size", size, "--duration", DURATION, "--prefix", "large")
    used = cpu_seconds(broker.pid()) - before
    return s["consumed_per_sec"], used * 1e6 / max(s["consumed"], 1)


FLOOR = os.path.join(compare.ROOT, "target", "release", "examples", "tcp_floor")
# The send buffer Hare asks for on its sockets by default (tcp_sndbuf), given to the relay too:
# the kernel's cost depends on it.
FLOOR_SNDBUF = 512 * 1024


def floor(size):
    """The kernel's floor for `size`-byte messages: (msg/s, CPU µs per message) of a bare
    loopback TCP relay (examples/tcp_floor.rs, built by bench/prepare.sh) with Hare's send
    buffer."""
    cmd = [FLOOR, str(size), str(DURATION), "1", str(FLOOR_SNDBUF)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION * 6 + 60)
    if out.returncode != 0:
        raise RuntimeError(f"tcp_floor {size}: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    return r["per_sec"], r["cpu_us_per_message"]


def mean_runs(runs):
    """The mean rate and the mean CPU per message of (rate, CPU) pairs."""
    return sum(r for r, _ in runs) / len(runs), sum(c for _, c in runs) / len(runs)


def main():
    brokers = [compare.Hare(), compare.RabbitMQ()]
    rows = []
    log = lambda *a: print(*a, flush=True)
    rates = {}
    per_binding = {}
    per_queue = {}
    durable, durable_rss, restart, lat, big = {}, {}, {}, {}, {}
    floors = {}
    for r in range(LARGE_ROUNDS if "large" in SECTIONS else 0):
        for size in LARGE:
            floors.setdefault(size, []).append(floor(size))
            log(f"large | round {r + 1}, kernel floor (bare TCP relay), {size} B: {floors[size][-1]}")
        for b in brokers:
            for size in LARGE:
                b.start()
                try:
                    big.setdefault((b.name, size), []).append(large(b, size))
                finally:
                    b.stop()
                log(f"large | round {r + 1}, {b.name}, {size} B: {big[(b.name, size)][-1]}")
    for b in brokers:
        if "durable" in SECTIONS:
            b.start()
            try:
                before = settled_rss(b)
                durable[b.name] = durable_declares(b, DURABLE)
                r, declared = durable[b.name]
                log(f"durable | {b.name}: {declared:,} declared, tenths: {', '.join(f'{x:.0f}' for x in r)} /s")
                durable_rss[b.name] = (settled_rss(b) - before) / durable[b.name][1]
            finally:
                b.stop()
            try:
                restart[b.name] = b.start(fresh=False)
            except RuntimeError:
                # Not listening within the launcher's deadline (600 s for RabbitMQ).
                restart[b.name] = None
            b.stop()
            r, declared = durable[b.name]
            log(f"durable | {b.name}: {declared:,} declared, {r[0]:.0f}/s first tenth, {r[-1]:.0f}/s tenth {len(r)}; restart {restart[b.name]} s")
        if "storm" in SECTIONS:
            for with_storm in (False, True):
                b.start()
                try:
                    lat[(b.name, with_storm)] = latency_p99(b, with_storm)
                finally:
                    b.stop()
                log(f"latency | {b.name}, storm={with_storm}: {lat[(b.name, with_storm)]}")
        if "topic" not in SECTIONS:
            continue
        for n in [0] + BINDINGS:
            b.start()
            try:
                before = settled_rss(b)
                took = add_bindings(b, n) if n else 0.0
                if n:
                    per_binding[(b.name, n)] = (settled_rss(b) - before) / n
                s = compare.perf(b, "--exchange", "topic", "--size", 64, "--duration", DURATION, "--prefix", "scale")
            finally:
                b.stop()
            rates[(b.name, n)] = s["consumed_per_sec"]
            log(f"topic | {b.name}, {n} extra bindings (bound in {took:.1f} s): {s['consumed_per_sec']:.0f} msg/s")
        if "queues" not in SECTIONS:
            continue
        b.start()
        try:
            before = settled_rss(b)
            conn = declare_queues(b, QUEUES)
            per_queue[b.name] = (settled_rss(b) - before) / QUEUES
            conn.close()
        finally:
            b.stop()
        log(f"queues | {b.name}: {per_queue[b.name]:.2f} KiB per idle queue")
    for size in LARGE if big else []:
        label = f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"
        hruns, qruns = big[("Hare", size)], big[("RabbitMQ", size)]
        (hr, hc), (qr, qc) = mean_runs(hruns), mean_runs(qruns)
        rows.append((f"1->1, {label} messages", "consumed msg/s", f"{hr:,.0f}", f"{qr:,.0f}", f"{hr / qr:.2f}"))
        rows.append((f"1->1, {label} messages", "broker CPU µs per message", f"{hc:,.1f}", f"{qc:,.1f}", f"{hc / qc:.2f}"))
        each = lambda runs: " / ".join(f"{c:,.1f}" for _, c in runs)
        ratios = " / ".join(f"{h[1] / q[1]:.2f}" for h, q in zip(hruns, qruns))
        rows.append((f"1->1, {label}: each round", "broker CPU µs per message", each(hruns), each(qruns), ratios))
        fr, fc = mean_runs(floors[size])
        rows.append(
            # Not a broker: the floor's CPU per message (in the Hare column) and its ratio to RabbitMQ's.
            (f"1->1, {label}: a bare TCP relay, the kernel's floor ({fr:,.0f} msg/s)", "relay CPU µs per message", f"{fc:.1f}", "", f"{fc / qc:.2f}")
        )
    if durable:
        (hr, hn), (qr, qn) = durable["Hare"], durable["RabbitMQ"]
        for name, i in (("first tenth", 0), ("last tenth", -1)):
            h, q = hr[i], qr[i]
            if i == -1 and (len(hr) < 10 or len(qr) < 10):
                # A broker stopped by the deadline: its last completed tenth, named.
                name = f"last completed tenth (Hare's {len(hr)}th, RabbitMQ's {len(qr)}th)"
            rows.append(
                (f"{DURABLE:,} durable queues + binding, one channel: {name}", "queues/s", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}")
            )
        if hn < DURABLE or qn < DURABLE:
            rows.append((f"declared within {DURABLE_DEADLINE:.0f} s", "queues", f"{hn:,}", f"{qn:,}", f"{hn / qn:.2f}"))
        h, q = durable_rss["Hare"], durable_rss["RabbitMQ"]
        rows.append((f"idle durable queues + binding ({hn:,} / {qn:,})", "broker KiB per queue", f"{h:.2f}", f"{q:.2f}", f"{h / q:.2f}"))
        h, q = restart["Hare"], restart["RabbitMQ"]
        show = lambda t: "not within 600" if t is None else f"{t:.2f}"
        ratio = f"{h / q:.2f}" if h and q else ""
        rows.append((f"restart with the durable queues + bindings ({hn:,} / {qn:,})", "s to accept", show(h), show(q), ratio))
    if lat:
        hq, qq = lat[("Hare", False)][0], lat[("RabbitMQ", False)][0]
        (hs, hn), (qs, qn) = lat[("Hare", True)], lat[("RabbitMQ", True)]
        rows.append(("1->1 at 20,000 msg/s, 64 B, quiet", "e2e p99 ms", f"{hq:.2f}", f"{qq:.2f}", f"{hq / qq:.2f}"))
        rows.append(
            (f"the same while declaring {STORM:,} durable queues over the run ({hn:,} / {qn:,} declared)", "e2e p99 ms", f"{hs:.2f}", f"{qs:.2f}", f"{hs / qs:.2f}")
        )
        rows.append(("p99 during the declares / quiet p99", "ratio", f"{hs / hq:.2f}", f"{qs / qq:.2f}", ""))
    for n in [0] + BINDINGS if rates else []:
        h, q = rates[("Hare", n)], rates[("RabbitMQ", n)]
        label = "1 binding" if n == 0 else f"1 + {n:,} bindings"
        rows.append((f"topic 1->1, 64 B, {label}", "consumed msg/s", f"{h:,.0f}", f"{q:,.0f}", f"{h / q:.2f}"))
    for n in BINDINGS if rates else []:
        h = rates[("Hare", n)] / rates[("Hare", 0)]
        q = rates[("RabbitMQ", n)] / rates[("RabbitMQ", 0)]
        rows.append((f"topic, 1 + {n:,} bindings / 1 binding", "rate ratio", f"{h:.2f}", f"{q:.2f}", ""))
    for n in BINDINGS if per_binding else []:
        h, q = per_binding[("Hare", n)], per_binding[("RabbitMQ", n)]
        rows.append((f"{n:,} topic bindings (`other.<i>.#`)", "broker KiB per binding", f"{h:.2f}", f"{q:.2f}", f"{h / q:.2f}"))
    if per_queue:
        h, q = per_queue["Hare"], per_queue["RabbitMQ"]
        rows.append((f"{QUEUES:,} idle non-durable queues", "broker KiB per queue", f"{h:.2f}", f"{q:.2f}", f"{h / q:.2f}"))
    today = datetime.date.today().isoformat()
    rmq = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True, text=True).stdout
    hare = compare.revision()
    lines = [
        f"# Scale: Hare vs RabbitMQ, {today}",
        "",
        f"Hare at {hare}; RabbitMQ {rmq} from Debian's packages. {os.cpu_count()} cores.",
        f"Each run on a fresh broker, {DURATION:.0f} s of `hare perf --exchange topic --size 64`.",
        "Memory rows: the broker's RSS once settled, after minus before, divided by the count.",
        f"Large-message rows: {DURATION:.0f} s of `hare perf --size <size>` per run, {LARGE_ROUNDS} rounds alternating the brokers, the mean.",
        "",
        "| scenario | metric | Hare | RabbitMQ | Hare / RabbitMQ |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    suffix = "" if set(SECTIONS) >= {"topic", "queues", "durable", "storm", "large"} else "-" + "-".join(SECTIONS)
    compare.save(f"{today}-scale{suffix}", lines)


if __name__ == "__main__":
    main()
