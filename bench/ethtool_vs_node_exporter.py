#!/usr/bin/env python3
"""ethtool statistics cost: hostwatch's ioctl path against node_exporter's
ethtool collector, side by side, interleaved.

What: the CPU one collection of driver statistics (`ethtool -S`) costs, per
collection and per interface, on eth0 plus 8 veth interfaces. The script
creates the veth pairs hwb0..hwb7 with their peers in a network namespace of
its own (`hwbench`) and always deletes both at exit (try/finally and atexit;
leftovers of an interrupted run are removed at start). No traffic is sent.

The agents:
  hostwatch      only the ethtool collector (every other collector listed by
                 `hostwatch collectors` is disabled), include "eth0|hwb[0-7]",
                 raw_stats ".*" (every statistic of every driver exported),
                 interval 10 ms, timeout 1 s (the default timeout equals the
                 interval, and a collection stretched past 10 ms by a busy
                 machine would be dropped as timed out). It collects on its own
                 schedule and is not scraped while measured.
  node_exporter  --collector.disable-defaults --collector.ethtool
                 --collector.ethtool.device-include='^(eth0|hwb[0-7])$';
                 it collects on every scrape. Scraped every 10 ms over one
                 keep-alive connection.
  Two baselines, each subtracted from its agent to give the part that grows
  with interfaces (the "share"):
  hostwatch, no interface   the same config with include = "hwbnone": each
                 collection lists /sys/class/net and reads nothing; what is
                 left is the scheduler's cost per collection (timer, hand-off to
                 a blocking thread, publishing the samples).
  node_exporter, empty   --collector.disable-defaults alone: what a scrape costs
                 without any collector (HTTP, Go runtime and process metrics,
                 encoding).

How: rounds of four blocks of equal length, one per agent, in rotating order.
During a hostwatch block the script sleeps; during a node_exporter block it
scrapes that exporter every 10 ms. All four run throughout. CPU is the sum of
/proc/PID/task/*/schedstat (nanoseconds on CPU) over each agent's own blocks.

Counting hostwatch's collections: elapsed block time / interval, corrected by
the collection rate observed in a calibration phase before the rounds, where
the script scrapes hostwatch as fast as it can for 2 s and counts the changes
of hostwatch_collector_duration_seconds{collector="ethtool"} (each collection
publishes a new duration). Scraping during the measured blocks would add
hostwatch's encoding cost to the collection cost, so the count is not taken
there. node_exporter's operations are the scrapes themselves.

Reported: CPU per operation (one hostwatch collection, one node_exporter
scrape) and per interface, the shares, the ratios (whole operation and share), the wall time of one collection as each
agent reports it, and the series each agent exports per interface (both must
see the same interfaces and statistics).

Usage: bench/ethtool_vs_node_exporter.py [--hostwatch target/release/hostwatch] [--rounds 10] [--seconds 2]
Needs: root (ip netns, veth), iproute2, ethtool, prometheus-node-exporter
(packaging/install-deps.sh --test), an eth0 whose driver has statistics.
"""

import argparse
import atexit
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import free_port

NETNS = "hwbench"
VETHS = [f"hwb{i}" for i in range(8)]
INTERFACES = ["eth0", *VETHS]
INCLUDE = "eth0|hwb[0-7]"
INTERVAL_MS = 10

NODE_EXPORTER_ETHTOOL = [
    "--collector.disable-defaults",
    "--collector.ethtool",
    f"--collector.ethtool.device-include=^({INCLUDE})$",
]
NODE_EXPORTER_EMPTY = ["--collector.disable-defaults"]

DURATION = re.compile(rb'^hostwatch_collector_duration_seconds\{collector="ethtool"\} (\S+)$', re.M)
NE_DURATION = re.compile(rb'^node_scrape_collector_duration_seconds\{collector="ethtool"\} (\S+)$', re.M)


def run(*argv, check=True):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Veths:
    """hwb0..hwb7 in this namespace, their peers hwbp0..hwbp7 in NETNS."""

    def __init__(self):
        self.created = False

    def create(self):
        self.delete()  # leftovers of an interrupted run
        self.created = True
        run("ip", "netns", "add", NETNS)
        for i, name in enumerate(VETHS):
            run("ip", "link", "add", name, "type", "veth", "peer", "name", f"hwbp{i}", "netns", NETNS)
            run("ip", "link", "set", name, "up")
            run("ip", "-n", NETNS, "link", "set", f"hwbp{i}", "up")

    def delete(self):
        for name in VETHS:
            if os.path.exists(f"/sys/class/net/{name}"):
                run("ip", "link", "del", name, check=False)  # deletes the peer too
        if os.path.exists(f"/run/netns/{NETNS}"):
            run("ip", "netns", "del", NETNS, check=False)
        self.created = False


def cpu_sample(pid):
    """On-CPU seconds of all the process's threads (schedstat, nanoseconds;
    /proc/PID/stat counts 10 ms ticks, too coarse for short blocks), and the
    thread ids: a thread that exits inside a block takes its time with it."""
    total, tids = 0, set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            tids.add(tid)
        except FileNotFoundError:
            pass  # a thread that ended while we listed them
    return total / 1e9, tids


class Target:
    def __init__(self, name, argv, port, ready_path="/metrics"):
        self.name = name
        self.port = port
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        self.cpu = 0.0
        self.seconds = 0.0
        self.operations = 0
        self.lost_threads = 0
        deadline = time.time() + 10
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                status, _ = self.get(ready_path)
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"{name} did not start:\n{self.log.read().decode(errors='replace')}")
            time.sleep(0.05)

    def get(self, path="/metrics"):
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path, headers={"Accept": "text/plain;version=0.0.4"})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # hostwatch closes a keep-alive connection left idle past its
                # header timeout (5 s); open a new one once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def scrape(self):
        status, body = self.get()
        if status != 200:
            raise RuntimeError(f"{self.name}: HTTP {status}")
        return body

    def measure(self, block, seconds):
        """Runs `block(seconds)`, adding this target's CPU and elapsed time."""
        cpu_before, tids_before = cpu_sample(self.proc.pid)
        start = time.perf_counter()
        operations = block(seconds)
        elapsed = time.perf_counter() - start
        cpu_after, tids_after = cpu_sample(self.proc.pid)
        self.cpu += cpu_after - cpu_before
        self.seconds += elapsed
        self.operations += operations
        self.lost_threads += len(tids_before - tids_after)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def paced_scrapes(target, period, durations=None):
    """A block that scrapes `target` every `period` seconds; returns the count."""

    def block(seconds):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            body = target.scrape()
            count += 1
            if durations is not None:
                match = NE_DURATION.search(body)
                if match:
                    durations.append(float(match.group(1)))
            pause = start + count * period - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        return count

    return block


def calibrate(hostwatch, seconds):
    """Collections per second seen from outside: scrapes hostwatch as fast as
    possible and counts changes of the ethtool collector's duration. Returns
    (rate, largest gap between scrapes, the durations seen)."""
    last, changes, durations = None, 0, []
    start = previous = time.perf_counter()
    largest_gap = 0.0
    while True:
        body = hostwatch.scrape()
        now = time.perf_counter()
        largest_gap = max(largest_gap, now - previous)
        previous = now
        match = DURATION.search(body)
        if match is None:
            raise RuntimeError("hostwatch exports no ethtool collector duration: is the collector up?")
        if last is not None and match.group(1) != last:
            changes += 1
            durations.append(float(match.group(1)))
        last = match.group(1)
        if now - start >= seconds:
            return changes / (now - start), largest_gap, durations


def series_per_interface(body, label):
    """Series and statistics per interface: (all series, statistic series)."""
    counts = {}
    pattern = re.compile(r'^(\w+)\{[^}]*\b' + label + r'="([^"]+)"')
    for line in body.decode().splitlines():
        match = pattern.match(line)
        if match:
            name, interface = match.groups()
            total, stats = counts.get(interface, (0, 0))
            is_stat = name in ("hostwatch_ethtool_statistic",) or (
                name.startswith("node_ethtool_") and name != "node_ethtool_info"
            )
            counts[interface] = (total + 1, stats + is_stat)
    return counts


def driver(interface):
    result = run("ethtool", "-i", interface, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("driver:"):
            return line.split(":", 1)[1].strip()
    return "?"


def hostwatch_config(binary, include):
    """Disables every collector `hostwatch collectors` lists except ethtool."""
    listing = run(binary, "collectors").stdout.splitlines()
    names = [line.split()[0] for line in listing[1:] if line.strip()]
    if "ethtool" not in names:
        raise RuntimeError(f"this hostwatch has no ethtool collector: {names}")
    sections = [f"[collectors.{name}]\nenabled = false\n" for name in names if name != "ethtool"]
    sections.append(
        "[collectors.ethtool]\n"
        f'include = "{include}"\n'
        'raw_stats = ".*"\n'
        f'interval = "{INTERVAL_MS}ms"\n'
        'timeout = "1s"\n'
    )
    return "\n".join(sections), [name for name in names if name != "ethtool"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--node-exporter", default="/usr/bin/prometheus-node-exporter")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one agent's block in a round")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: creates veth pairs and a network namespace")
    if not os.path.exists("/sys/class/net/eth0"):
        sys.exit("no eth0 on this host")

    # SIGTERM and SIGHUP end the run through the finally blocks below.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    veths = Veths()
    atexit.register(veths.delete)
    targets = []
    try:
        veths.create()
        with tempfile.TemporaryDirectory() as tmp:
            hostwatches = []
            for name, include in (("hostwatch", INCLUDE), ("hostwatch, no interface", "hwbnone")):
                config_text, disabled = hostwatch_config(args.hostwatch, include)
                config = os.path.join(tmp, f"hostwatch-{len(hostwatches)}.toml")
                with open(config, "w") as f:
                    f.write(config_text)
                validation = run(args.hostwatch, "validate", "--config", config, check=False)
                if validation.returncode != 0:
                    sys.exit(f"hostwatch refuses the config:\n{config_text}\n{validation.stdout}{validation.stderr}")
                port = free_port()
                target = Target(
                    name,
                    [args.hostwatch, "run", "--config", config, "--listen", f"127.0.0.1:{port}"],
                    port,
                    ready_path="/readyz",
                )
                targets.append(target)
                hostwatches.append(target)
            hostwatch, idle = hostwatches
            port = free_port()
            node = Target(
                "node_exporter",
                [args.node_exporter, f"--web.listen-address=127.0.0.1:{port}", *NODE_EXPORTER_ETHTOOL],
                port,
            )
            targets.append(node)
            port = free_port()
            empty = Target(
                "node_exporter, empty",
                [args.node_exporter, f"--web.listen-address=127.0.0.1:{port}", *NODE_EXPORTER_EMPTY],
                port,
            )
            targets.append(empty)

            # Warm up: both past start-up, caches and Go's heap sized.
            time.sleep(1.0)
            for target in (node, empty):
                paced_scrapes(target, INTERVAL_MS / 1000)(1.0)
            calibration = {t.name: calibrate(t, 2.0) for t in hostwatches}
            nominal_rate = 1000 / INTERVAL_MS
            time.sleep(0.5)

            period = INTERVAL_MS / 1000
            ne_durations = []
            blocks = [
                (hostwatch, lambda seconds: time.sleep(seconds) or 0),
                (idle, lambda seconds: time.sleep(seconds) or 0),
                (node, paced_scrapes(node, period, ne_durations)),
                (empty, paced_scrapes(empty, period)),
            ]
            for round_ in range(args.rounds):
                shift = round_ % len(blocks)
                for target, block in blocks[shift:] + blocks[:shift]:
                    target.measure(block, args.seconds)
            for target in hostwatches:
                target.operations = round(target.seconds * calibration[target.name][0])

            hw_body, ne_body = hostwatch.scrape(), node.scrape()
            errors = {
                kind: float(value)
                for kind, value in re.findall(
                    r'^hostwatch_collector_errors_total\{collector="ethtool",kind="(\w+)"\} (\S+)$',
                    hw_body.decode(),
                    re.M,
                )
            }
            up = re.search(r'^hostwatch_collector_up\{collector="ethtool"\} (\S+)$', hw_body.decode(), re.M)
            hw_series = series_per_interface(hw_body, "interface")
            ne_series = series_per_interface(ne_body, "device")
            drivers = {interface: driver(interface) for interface in INTERFACES}
    finally:
        for target in targets:
            target.stop()
        veths.delete()

    per_op = {t.name: t.cpu / t.operations * 1e6 for t in targets}
    hw_share = per_op["hostwatch"] - per_op["hostwatch, no interface"]
    ne_share = per_op["node_exporter"] - per_op["node_exporter, empty"]
    n = len(INTERFACES)

    print(f"# {time.strftime('%Y-%m-%d')} on {os.uname().nodename}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print()
    print(
        f"{n} interfaces ({', '.join(f'{i} {drivers[i]}' for i in INTERFACES[:2])}, ...); "
        f"{args.rounds} rounds of {args.seconds:g} s per agent, interleaved; "
        f"hostwatch collects every {INTERVAL_MS} ms, node_exporter is scraped every {INTERVAL_MS} ms. "
        f"hostwatch collectors disabled: {', '.join(disabled)}."
    )
    print()
    print("| agent | operation | operations | CPU s | CPU µs / operation | CPU µs / interface |")
    print("|---|---|---|---|---|---|")
    what = {
        "hostwatch": "one ethtool collection (ioctls)",
        "hostwatch, no interface": "one collection selecting no interface",
        "node_exporter": "one scrape, ethtool collector",
        "node_exporter, empty": "one scrape, no collector",
    }
    for t in targets:
        print(
            f"| {t.name} | {what[t.name]} | {t.operations} | {t.cpu:.4f} "
            f"| {per_op[t.name]:.1f} | {per_op[t.name] / n:.1f} |"
        )
    print(f"| hostwatch share | collection less empty collection | | | {hw_share:.1f} | {hw_share / n:.1f} |")
    print(f"| node_exporter share | scrape less empty scrape | | | {ne_share:.1f} | {ne_share / n:.1f} |")
    print()
    print("| ratio, node_exporter / hostwatch CPU | value |")
    print("|---|---|")
    print(f"| per operation (scrape / collection) | {per_op['node_exporter'] / per_op['hostwatch']:.1f}x |")
    print(f"| node_exporter share / hostwatch collection | {ne_share / per_op['hostwatch']:.1f}x |")
    print(f"| share / share (per-interface cost) | {ne_share / hw_share:.1f}x |")
    print()
    print("| wall time of one collection, as each agent reports it | median ms | p90 ms |")
    print("|---|---|---|")
    for name, values in (
        ("hostwatch (hostwatch_collector_duration_seconds)", calibration["hostwatch"][2]),
        ("hostwatch, no interface", calibration["hostwatch, no interface"][2]),
        ("node_exporter (node_scrape_collector_duration_seconds)", ne_durations),
    ):
        if values:
            ordered = sorted(values)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            print(f"| {name} | {statistics.median(values) * 1000:.3f} | {p90 * 1000:.3f} |")
    print()
    print("| interface | driver | hostwatch series | hostwatch statistics | node_exporter series | node_exporter statistics |")
    print("|---|---|---|---|---|---|")
    for interface in INTERFACES:
        hw_total, hw_stats = hw_series.get(interface, (0, 0))
        ne_total, ne_stats = ne_series.get(interface, (0, 0))
        print(f"| {interface} | {drivers[interface]} | {hw_total} | {hw_stats} | {ne_total} | {ne_stats} |")
    print()
    for name, (rate, gap, _) in calibration.items():
        print(
            f"{name}: collections counted at {rate:.1f}/s observed, {nominal_rate:.1f}/s nominal "
            f"(largest gap between calibration scrapes {gap * 1000:.1f} ms)."
        )
        if gap * 1000 >= INTERVAL_MS:
            print("WARNING: calibration scrapes were further apart than the interval; collections may be undercounted")
    print(
        f"hostwatch ethtool collector up: {up.group(1) if up else 'absent'}; "
        f"errors: {', '.join(f'{k} {v:g}' for k, v in errors.items()) or 'none'}."
    )
    lost = {t.name: t.lost_threads for t in targets if t.lost_threads}
    if lost:
        print(f"WARNING: threads exited inside measured blocks (their CPU is missing): {lost}")
    missing = [i for i in INTERFACES if i not in hw_series or i not in ne_series]
    if missing:
        print(f"WARNING: interfaces missing from an agent's output: {missing}")


if __name__ == "__main__":
    sys.exit(main())
