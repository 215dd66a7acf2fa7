#!/usr/bin/env python3
"""GIL probe overhead: hostwatch's uprobes against py-spy, interleaved.

A 4-thread pure-Python benchmark (CPU-bound threads contending for the GIL)
runs under Debian's /usr/bin/python3.11 (stripped; hostwatch finds take_gil
and drop_gil in python3.11-dbg's debug file: debuginfo mode) in three ways,
round after round in rotating order so that machine noise hits all alike:

  none      hostwatch runs but does not select the process (its own collection
            cost is the same in every trial; only the probes differ)
  hostwatch hostwatch probes the process's GIL (four uprobes)
  py-spy    `py-spy record --gil` samples the process at its default rate
            (100 Hz; it pauses the process for each sample by default)

Throughput is loop iterations per second summed over the four threads, over a
fixed window after a warm-up. In the hostwatch trials the per-thread GIL wait
share is read from hostwatch's counters over the same window (expected: 3/4).

A second scenario measures the cost of one probe hit: one thread calling
os.read(/dev/zero, 1), which releases and retakes the GIL around a cheap
system call (three probe hits per call with Debian's build), with and without
the probes; the difference in time per call over hits per call is the
per-hit cost that hostwatch's cost governor assumes (probe_hit_cost_ns).

Usage: cargo build --release && bench/gil_overhead.py [--rounds 5] [--seconds 5]
Needs: root, python3.11-dbg and py-spy (packaging/install-deps.sh --test).
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PYTHON = "/usr/bin/python3.11"

# Prints "ready", warms up, counts iterations for SECONDS, prints iterations
# per second and the process's CPU seconds in that window, and waits for a line
# on stdin before exiting (so that the agent can still be scraped about it).
THREADS_WORKER = r"""
import sys, threading, time
threads, warmup, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
counts = [0] * threads
start = time.monotonic() + warmup
stop = start + seconds
def work(i):
    n = 0
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        for _ in range(200):
            pass
        if now >= start:
            n += 1
    counts[i] = n * 200
workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
print("ready", flush=True)
time.sleep(max(0.0, start - time.monotonic()))
cpu = time.process_time()
time.sleep(max(0.0, stop - time.monotonic()))
cpu = time.process_time() - cpu
for w in workers:
    w.join()
print(sum(counts) / seconds, cpu, flush=True)
sys.stdin.readline()
"""

RELEASE_WORKER = r"""
import os, sys, time

from common import free_port
warmup, seconds = float(sys.argv[1]), float(sys.argv[2])
fd = os.open("/dev/zero", os.O_RDONLY)
print("ready", flush=True)
time.sleep(warmup)
calls = 0
start = time.monotonic()
stop = start + seconds
while time.monotonic() < stop:
    for _ in range(1000):
        os.read(fd, 1)
    calls += 1000
print(calls, time.monotonic() - start, flush=True)
sys.stdin.readline()
"""


class Agent:
    def __init__(self, binary, tag):
        self.dir = tempfile.TemporaryDirectory(prefix="hostwatch-gil-bench-")
        config = os.path.join(self.dir.name, "hostwatch.toml")
        with open(config, "w") as f:
            f.write(
                "[collectors.python]\n"
                'interval = "100ms"\n'
                'rescan_interval = "100ms"\n'
                f"cmdline = '.* {tag}( .*)?'\n"
                # The benchmark measures the probes' cost: the governor must
                # not shed the release-heavy worker (its estimate stays tiny).
                "probe_hit_cost_ns = 1\n"
            )
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "run", "--config", config, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("hostwatch did not start")

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def value(self, name, pid):
        m = re.search(r'^%s\{process="[^"]*/%d"\} (\S+)' % (re.escape(name), pid), self.metrics(), re.M)
        return float(m.group(1)) if m else None

    def wait_probed(self, pid):
        deadline = time.monotonic() + 10
        while self.value("hostwatch_python_gil_probe_hits_total", pid) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"hostwatch did not probe {pid}")
            time.sleep(0.02)

    def cpu_seconds(self):
        total = 0
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.dir.cleanup()


def start_worker(code, args, tag):
    proc = subprocess.Popen(
        [PYTHON, "-c", code, *map(str, args), tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    return proc


def finish(proc):
    line = proc.stdout.readline()
    return line


def release(proc):
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


def fresh_wait(agent, pid, previous):
    """The wait counter as soon as a new collection changed it, and when."""
    while True:
        value = agent.value("hostwatch_python_gil_wait_seconds_total", pid)
        if value is not None and value != previous:
            return time.monotonic(), value
        time.sleep(0.01)


def threads_trial(mode, agent, args, tags):
    warmup, seconds = 1.0, args.seconds
    tag = tags["probed"] if mode == "hostwatch" else tags["unprobed"]
    proc = start_worker(THREADS_WORKER, [4, warmup, seconds], tag)
    spy = None
    share = None
    if mode == "py-spy":
        out = tempfile.NamedTemporaryFile(prefix="py-spy-", suffix=".txt", delete=False)
        out.close()
        spy = subprocess.Popen(
            ["py-spy", "record", "--gil", "--pid", str(proc.pid), "--format", "raw", "-o", out.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    hit_rate = None
    if mode == "hostwatch":
        agent.wait_probed(proc.pid)
        # The window of the worker's count: after its warm-up, for `seconds`.
        time.sleep(max(0.0, warmup - 0.3))
        t0, w0 = fresh_wait(agent, proc.pid, None)
        h0 = agent.value("hostwatch_python_gil_probe_hits_total", proc.pid)
        time.sleep(seconds - 0.5)
        t1, w1 = fresh_wait(agent, proc.pid, w0)
        h1 = agent.value("hostwatch_python_gil_probe_hits_total", proc.pid)
        share = (w1 - w0) / (4 * (t1 - t0))
        hit_rate = (h1 - h0) / (t1 - t0)
    throughput, cpu = map(float, finish(proc).split())
    samples = None
    if spy:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        # Raw format: one line per distinct stack, its sample count last.
        with open(out.name) as f:
            samples = sum(int(line.rsplit(" ", 1)[1]) for line in f if line.strip())
        os.unlink(out.name)
    release(proc)
    return throughput, throughput * seconds / cpu, share, samples, hit_rate


def release_trial(mode, agent, args, tags):
    tag = tags["probed"] if mode == "hostwatch" else tags["unprobed"]
    proc = start_worker(RELEASE_WORKER, [1.0, args.seconds], tag)
    if mode == "hostwatch":
        agent.wait_probed(proc.pid)
    calls, elapsed = map(float, finish(proc).split())
    time.sleep(0.25)  # a collection after the last call
    hits = agent.value("hostwatch_python_gil_probe_hits_total", proc.pid) if mode == "hostwatch" else None
    release(proc)
    return elapsed / calls, hits, calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the probes need CAP_BPF and CAP_PERFMON")

    tags = {"probed": f"gil-bench-probed-{os.getpid()}", "unprobed": f"gil-bench-free-{os.getpid()}"}
    agent = Agent(args.hostwatch, tags["probed"])
    modes = ["none", "hostwatch", "py-spy"]
    results = {mode: [] for mode in modes}
    efficiency = {mode: [] for mode in modes}
    shares = []
    spy_samples = []
    hit_rates = []
    agent_cpu_start, wall_start = agent.cpu_seconds(), time.monotonic()
    try:
        for round_ in range(args.rounds):
            order = modes[round_ % 3 :] + modes[: round_ % 3]
            for mode in order:
                throughput, per_cpu, share, samples, hit_rate = threads_trial(mode, agent, args, tags)
                if hit_rate is not None:
                    hit_rates.append(hit_rate)
                results[mode].append(throughput)
                efficiency[mode].append(per_cpu)
                if share is not None:
                    shares.append(share)
                if samples is not None:
                    spy_samples.append(samples)
                print(
                    f"round {round_ + 1} {mode:9} {throughput:12.0f} it/s {per_cpu:12.0f} it/CPU-s"
                    + (f"  wait share {share:.3f}" if share else "")
                    + (f"  py-spy samples {samples}" if samples is not None else ""),
                    file=sys.stderr,
                )
        agent_cpu = (agent.cpu_seconds() - agent_cpu_start) / (time.monotonic() - wall_start)

        per_call = {"none": [], "hostwatch": []}
        hits_per_call = []
        for round_ in range(args.rounds):
            for mode in (["none", "hostwatch"] if round_ % 2 == 0 else ["hostwatch", "none"]):
                seconds, hits, calls = release_trial(mode, agent, args, tags)
                per_call[mode].append(seconds)
                if hits:
                    hits_per_call.append(hits / calls)
    finally:
        agent.stop()

    base = statistics.median(results["none"])
    base_cpu = statistics.median(efficiency["none"])
    print()
    print(f"Run: {time.strftime('%Y-%m-%d')} on {os.uname().nodename}, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds of {args.seconds:.0f} s, {PYTHON} (debuginfo mode)")
    print()
    print("| 4 threads, pure Python | median it/s | min | max | throughput cost | median it per CPU-s | CPU cost |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        values = results[mode]
        median = statistics.median(values)
        per_cpu = statistics.median(efficiency[mode])
        print(
            f"| {mode} | {median:.0f} | {min(values):.0f} | {max(values):.0f} | {100 * (1 - median / base):+.2f} % "
            f"| {per_cpu:.0f} | {100 * (1 - per_cpu / base_cpu):+.2f} % |"
        )
    print()
    print(f"py-spy samples per {args.seconds + 1:.0f} s trial: median {statistics.median(spy_samples):.0f}")
    print(f"Per-thread GIL wait share with hostwatch (expected 0.75): median {statistics.median(shares):.3f}, "
          f"min {min(shares):.3f}, max {max(shares):.3f}")
    print(f"hostwatch's own CPU during the runs: {agent_cpu * 100:.2f} % of one CPU")
    base_call = statistics.median(per_call["none"])
    probed_call = statistics.median(per_call["hostwatch"])
    hits = statistics.median(hits_per_call)
    print()
    print("| os.read(/dev/zero, 1), one thread | median us per call |")
    print("|---|---|")
    print(f"| none | {base_call * 1e6:.3f} |")
    print(f"| hostwatch | {probed_call * 1e6:.3f} |")
    print()
    per_hit = (probed_call - base_call) / hits
    print(f"Probe hits per call: {hits:.2f}; cost per hit: {per_hit * 1e9:.0f} ns "
          f"(the governor assumes probe_hit_cost_ns = 1500)")
    rate = statistics.median(hit_rates)
    print(f"4-thread benchmark: {rate:.0f} probe hits per second, at the measured cost per hit "
          f"{rate * per_hit * 100:.3f} % of one CPU (the process uses about one)")


main()
