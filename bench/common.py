"""What the benchmark scripts share: a free loopback port, a process's CPU
time and resident memory read from /proc, a percentile, and the S3 pacing
goal. Imported by the scripts beside it (`from common import ...`); not a
script itself."""

import os
import socket

# The S3 pacing issue's goal for the busiest millisecond on the wire, as a
# multiple of the limit's millisecond.
PEAK_GOAL = 1.5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """On-CPU time of all the process's threads, from schedstat (nanoseconds;
    /proc/PID/stat counts in 10 ms ticks, too coarse for a short run)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that ended while we listed them
    return total / 1e9


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values, p):
    """The nearest-rank p-th percentile (0 to 100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
