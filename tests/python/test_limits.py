"""Process limits the broker sets for itself at start."""
import resource

from conftest import Hare, wait_for


def test_open_files_soft_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Start the broker with Debian's default soft limit under whatever hard limit there is.
    low = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        h = Hare()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{h.proc.pid}/limits") as f:
            line = next(l for l in f if l.startswith("Max open files"))
        now_soft, now_hard = line.split()[3:5]
        assert now_soft == now_hard, line
        if low < hard:
            wait_for(lambda: f"open files limit raised from {low} to" in h.read_log(), what="the log line")
    finally:
        h.stop()
