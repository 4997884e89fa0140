#!/usr/bin/env python3
"""Where the broker's threads run, and what it costs per large message.

The same 1 -> 1 run as bench/scale.py's large rows (`hare perf --size N`, the broker's CPU
time per consumed message), with the broker's worker threads placed four ways; the load
generator is left free in every case:

- default: two worker threads on a 2-core machine (one per core), the kernel places them;
- one worker: TOKIO_WORKER_THREADS=1 for the broker only;
- two on one CPU: two worker threads (TOKIO_WORKER_THREADS=2: the runtime would otherwise size
  itself to the one CPU it is allowed) on the first CPU the broker may use, set before it
  starts;
- one per CPU: worker thread i on CPU i modulo the CPUs, set once the broker is up (its
  threads named tokio-rt-worker then are the workers: blocking threads, named alike, come
  later).

Placements alternate within each round, each on a fresh broker.

Usage: bench/threads.sh   (SIZE=65536 ROUNDS=3 DURATION=10; writes bench/results/)
"""

import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (broker launcher and the perf runner)
import scale  # noqa: E402  (the large-message measurement)

SIZE = int(os.environ.get("SIZE", "65536"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


class Placed(compare.Hare):
    """Hare started with its threads placed as `mode` says."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def start(self, fresh=True, memory_limit_mib=None):
        if self.mode == "one worker":
            self.env = dict(os.environ, TOKIO_WORKER_THREADS="1")
        if self.mode == "two on one CPU":
            first = min(os.sched_getaffinity(0))
            self.env = dict(os.environ, TOKIO_WORKER_THREADS="2")
            self.preexec = lambda: os.sched_setaffinity(0, {first})
        took = super().start(fresh, memory_limit_mib)
        if self.mode == "one per CPU":
            cpus = sorted(os.sched_getaffinity(0))
            workers = [t for t in os.listdir(f"/proc/{self.proc.pid}/task")
                       if open(f"/proc/{self.proc.pid}/task/{t}/comm").read().strip() == "tokio-rt-worker"]
            for i, t in enumerate(sorted(workers, key=int)):
                os.sched_setaffinity(int(t), {cpus[i % len(cpus)]})
        return took


MODES = ["default", "one worker", "two on one CPU", "one per CPU"]


def main():
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("threads.py needs at least 2 CPUs")
    got = {m: [] for m in MODES}
    for r in range(ROUNDS):
        for m in MODES:
            b = Placed(m)
            b.start()
            try:
                got[m].append(scale.large(b, SIZE))
            finally:
                b.stop()
            print(f"round {r + 1} | {m}: {got[m][-1][0]:,.0f} msg/s, {got[m][-1][1]:.1f} µs per message", flush=True)
    date = datetime.date.today().isoformat()
    rev = compare.revision()
    lines = [
        f"# Broker thread placement, {SIZE} B messages, 1 -> 1 ({date})",
        "",
        f"Hare at {rev}, {os.cpu_count()} cores, `bench/threads.sh`: {ROUNDS} rounds of "
        f"{scale.DURATION:.0f} s of `hare perf --size {SIZE}`, placements alternated, each on a fresh broker.",
        "The load generator is never pinned. Broker CPU time (user + system) per consumed message.",
        "",
        "| placement | consumed msg/s | broker CPU µs per message | runs (µs) |",
        "|---|---:|---:|---|",
    ]
    for m in MODES:
        rates = [x[0] for x in got[m]]
        cpu = [x[1] for x in got[m]]
        lines.append(
            f"| {m} | {compare.mean(rates):,.0f} | {compare.mean(cpu):.1f} | "
            + ", ".join(f"{c:.1f}" for c in cpu) + " |"
        )
    compare.save(f"{date}-threads-{SIZE}", lines)


if __name__ == "__main__":
    main()
