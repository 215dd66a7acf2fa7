#!/usr/bin/env python3
"""Microburst detector: the packet rate with its BPF programs attached and
detached, while one agent keeps running and one flood keeps flowing.

bench/netburst_overhead.py compares runs of a few seconds with and without
an agent, each started afresh; on this VM the rate of two such runs differs
by 10 to 14 % (their CV), more than what is measured. Here nothing restarts
but the attachment:

- One hostwatch agent runs throughout with only the netburst collector (the
  same config as bench/netburst_overhead.py's "with" state).
- Per path (lo, veth out, veth in, as in bench/netburst_overhead.py: the same
  namespace, veth pair and iperf3 pinning), one iperf3 UDP flood of 64-byte
  datagrams (`-u -l 64 -b 0`) runs for all of that path's phases.
- Every phase the script rewrites the agent's config, `include` the watched
  interfaces ("attached": the TCX programs on them) or none ("detached":
  nothing of ours on any interface), and sends SIGHUP. It waits until the
  agent's metrics show the interfaces watched or gone (the reload is done and
  the programs are attached or detached), lets SETTLE seconds pass (the
  reload's own CPU: loading and verifying the programs), then counts over
  MEASURE seconds the datagrams that the receiving namespace's UDP delivered
  to sockets (Udp InDatagrams, /proc/PID/net/snmp of the iperf3 server).
- Phases alternate, PAIRS of each, starting detached on one path and attached
  on the next.

Reported per path: the median received rate in each state, and the loss of
each attached phase against the mean of the detached phases on either side of
it (1 - attached / neighbours), as median and quartiles over the phases: a
drift of the machine over seconds cancels out, and the agent's own presence
(its wakeups, its folding) is in both states alike.

Usage: bench/netburst_toggle.py [--hostwatch target/release/hostwatch]
       [--pairs 10] [--settle 0.7] [--measure 1.5] [--no-pin]
Needs: root (BPF, ip netns), iproute2, iperf3, util-linux (taskset); all
installed by packaging/install-deps.sh --test. The namespace and the veth pair
are deleted at exit, as in bench/netburst_overhead.py.
"""

import argparse
import atexit
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import cpu_seconds
from netburst_overhead import (
    DATAGRAM,
    HERE,
    THERE,
    VETH,
    Agent,
    Net,
    Path,
    Processes,
    agent_config,
    load1,
)

UNWATCHED = "hwnbnone"


def in_datagrams(pid):
    """Udp InDatagrams of the network namespace process `pid` is in."""
    with open(f"/proc/{pid}/net/snmp") as f:
        header, values = [line.split() for line in f if line.startswith("Udp:")][:2]
    return int(values[header.index("InDatagrams")])


class Toggled:
    """The agent, switched between watching `lo` and the veth and watching nothing."""

    def __init__(self, binary, tmp, processes):
        self.attached_config, _ = agent_config(binary)
        self.detached_config, _ = agent_config(binary, include=UNWATCHED)
        self.agent = Agent(binary, self.attached_config, tmp, processes, "toggle")
        self.config = os.path.join(self.agent.dir, "hostwatch.toml")
        self.recordings = os.path.join(self.agent.dir, "recordings")
        self.attached = True

    def watching(self):
        text = self.agent.metrics() or ""
        return all(
            f'hostwatch_net_burst_threshold_bits_per_second{{interface="{i}",direction="transmit"}}' in text
            for i in ("lo", VETH)
        )

    def set(self, attached):
        text = self.attached_config if attached else self.detached_config
        with open(self.config, "w") as f:
            f.write(text.replace("@RECORDINGS@", self.recordings))
        self.agent.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while self.watching() != attached:
            if self.agent.proc.poll() is not None or time.monotonic() > deadline:
                self.agent.log.seek(0)
                raise RuntimeError(f"the agent did not {'attach' if attached else 'detach'}:\n{self.agent.log.read()[-3000:]}")
            time.sleep(0.05)
        self.attached = attached


def flood(path, processes, seconds):
    argv = path.client_prefix + [
        "iperf3", "-c", path.server_addr, "-B", path.client_addr, "-p", str(path.port),
        "-u", "-l", str(DATAGRAM), "-b", "0", "-t", str(seconds), "--connect-timeout", "3000",
    ]  # fmt: skip
    return processes.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def measure(path, toggled, processes, first_attached, args):
    """[(attached, datagrams per second, agent CPU in cores)] for each phase of one flood."""
    phases = [(first_attached if i % 2 == 0 else not first_attached) for i in range(2 * args.pairs)]
    toggled.set(phases[0])
    budget = 2 * args.pairs * (args.settle + args.measure + 3) + 10
    client = flood(path, processes, int(budget))
    time.sleep(1.0)  # the flood started, the server's socket busy
    results = []
    try:
        for attached in phases:
            if toggled.attached != attached:
                toggled.set(attached)
            time.sleep(args.settle)
            if client.poll() is not None:
                raise RuntimeError(f"iperf3 on {path.name} ended early: {client.stderr.read()}")
            agent = cpu_seconds(toggled.agent.pid)
            before, start = in_datagrams(path.server.pid), time.monotonic()
            time.sleep(args.measure)
            after, end = in_datagrams(path.server.pid), time.monotonic()
            agent = (cpu_seconds(toggled.agent.pid) - agent) / (end - start)
            results.append((attached, (after - before) / (end - start), agent))
    finally:
        processes.stop(client)
    return results


def losses(results):
    """1 - attached / mean of the detached phases on either side, per attached phase."""
    out = []
    for i, (attached, rate, _) in enumerate(results):
        if not attached:
            continue
        beside = [results[j][1] for j in (i - 1, i + 1) if 0 <= j < len(results) and not results[j][0]]
        if beside:
            out.append(1 - rate / statistics.mean(beside))
    return out


def quartiles(values):
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--pairs", type=int, default=10, help="attached and detached phases of each path")
    parser.add_argument("--settle", type=float, default=0.7, help="seconds after each switch before counting")
    parser.add_argument("--measure", type=float, default=1.5, help="seconds counted per phase")
    parser.add_argument("--no-pin", action="store_true", help="do not pin iperf3 clients and servers to CPUs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: loads BPF programs, creates a network namespace and a veth pair")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    binary = os.path.abspath(args.hostwatch)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(1))
    net, processes = Net(), Processes()
    atexit.register(net.delete)
    atexit.register(processes.stop_all)
    loads, rows = [load1()], []
    net.create()
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            Path("lo", False, "127.0.0.1", False, "127.0.0.1", processes, pin),
            Path("veth out", True, THERE, False, HERE, processes, pin),
            Path("veth in", False, HERE, True, THERE, processes, pin),
        ]
        toggled = Toggled(binary, tmp, processes)
        time.sleep(1.0)
        for n, path in enumerate(paths):
            results = measure(path, toggled, processes, n % 2 == 1, args)
            loads.append(load1())
            rows.append((path.name, results))
            print(f"{path.name}: {[(a, round(r)) for a, r, _ in results]}", file=sys.stderr)
        bursts = sum(toggled.agent.values("hostwatch_net_bursts_total").values())
        lost = sum(toggled.agent.values("hostwatch_net_slots_lost_total").values())
        reloads = re.search(r"^hostwatch_config_reloads_total (\S+)$", toggled.agent.metrics() or "", re.M)
        toggled.agent.stop()
    net.delete()

    print(
        f"\nOne agent throughout (netburst only, reloaded by SIGHUP {reloads.group(1) if reloads else '?'} times); per path one "
        f"iperf3 UDP flood of {DATAGRAM}-byte datagrams, {args.pairs} attached and {args.pairs} detached phases, "
        f"{args.settle} s settling and {args.measure} s counted each; received datagrams per second (Udp "
        f"InDatagrams of the receiving namespace). 1-minute load {min(loads):.2f} to {max(loads):.2f}; "
        f"{bursts:.0f} bursts, {lost:.0f} lost milliseconds.\n"
    )
    print("| path | attached, median kpps | detached, median kpps | loss per attached phase against its neighbours: median (goal ≤ 2 %) | quartiles | phases slower | agent CPU % of a core, attached / detached |")
    print("|---|---|---|---|---|---|---|")
    for name, results in rows:
        attached = [r for a, r, _ in results if a]
        detached = [r for a, r, _ in results if not a]
        cpu = [statistics.median([c for a, _, c in results if a == state]) * 100 for state in (True, False)]
        loss = losses(results)
        low, high = quartiles(loss)
        slower = sum(1 for x in loss if x > 0)
        print(
            f"| {name} | {statistics.median(attached) / 1e3:.1f} | {statistics.median(detached) / 1e3:.1f} "
            f"| {statistics.median(loss) * 100:+.1f} % | {low * 100:+.1f} % to {high * 100:+.1f} % | {slower} of {len(loss)} "
            f"| {cpu[0]:.2f} / {cpu[1]:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
