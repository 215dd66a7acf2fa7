#!/usr/bin/env python3
"""Scrape cost: hostwatch against node_exporter, side by side, interleaved.

Both agents read this host's real /proc with a comparable set of collectors
(cpu, memory/meminfo, netdev, pressure; each also exports its own process
metrics). Scrapes alternate between the two in blocks of 50 over one
keep-alive connection each, like a Prometheus server's, so machine noise
hits both alike.

Two scenarios:
  burst  1000 scrapes each, back to back. hostwatch collects on its own 1 s
         schedule and serves a cached encoding between collections; node_exporter
         collects on every scrape. Both agents' CPU over the whole run is counted,
         background collection included.
  paced  200 scrapes each, 25 ms apart, so most hostwatch
         scrapes re-encode fresh samples.

Also "idle": 10 s without scrapes, CPU seconds per second. hostwatch keeps
collecting every second; node_exporter does nothing until scraped.

Reported per agent: resident memory after the scrapes, CPU seconds per 1000
scrapes, scrape latency p50 and p99 (request sent to body read), series count,
and the hostwatch / node_exporter ratios.

Usage: bench/scrape_vs_node_exporter.py [--hostwatch target/release/hostwatch]
Needs: prometheus-node-exporter (packaging/install-deps.sh --test).
"""

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import free_port, cpu_seconds, percentile, rss_bytes

NODE_EXPORTER_ARGS = [
    "--collector.disable-defaults",
    "--collector.cpu",
    "--collector.meminfo",
    "--collector.netdev",
    "--collector.pressure",
]
HOSTWATCH_CONFIG = """
[collectors.cgroups]
enabled = false
"""


class Target:
    def __init__(self, name, argv, port):
        self.name = name
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                self.conn.request("GET", "/metrics")
                self.body = self.conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.latencies = []

    def scrape(self):
        start = time.perf_counter()
        self.conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        response = self.conn.getresponse()
        body = response.read()
        self.latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status}")
        self.body = body

    def series(self):
        return sum(1 for line in self.body.decode().splitlines() if line and not line.startswith("#"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)


def run_scenario(name, targets, scrapes, pause):
    for t in targets:
        t.latencies = []
    cpu_before = {t.name: cpu_seconds(t.proc.pid) for t in targets}
    block = 50
    for _ in range(scrapes // block):
        for t in targets:
            for _ in range(block):
                t.scrape()
                if pause:
                    time.sleep(pause)
    results = {}
    for t in targets:
        cpu = cpu_seconds(t.proc.pid) - cpu_before[t.name]
        results[t.name] = {
            "rss_mib": rss_bytes(t.proc.pid) / 2**20,
            "cpu_per_1000": cpu * 1000 / scrapes,
            "p50_ms": percentile(t.latencies, 50) * 1000,
            "p99_ms": percentile(t.latencies, 99) * 1000,
            "series": t.series(),
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--node-exporter", default="/usr/bin/prometheus-node-exporter")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "hostwatch.toml")
        with open(config, "w") as f:
            f.write(HOSTWATCH_CONFIG)
        hw_port, ne_port = free_port(), free_port()
        hostwatch = Target(
            "hostwatch", [args.hostwatch, "run", "--config", config, "--listen", f"127.0.0.1:{hw_port}"], hw_port
        )
        node = Target(
            "node_exporter",
            [args.node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}", *NODE_EXPORTER_ARGS],
            ne_port,
        )
        targets = [hostwatch, node]
        try:
            time.sleep(1.5)  # both past start-up and first collection
            scenarios = {
                "burst": run_scenario("burst", targets, 1000, 0),
                "paced": run_scenario("paced", targets, 200, 0.025),
            }
            idle_before = {t.name: cpu_seconds(t.proc.pid) for t in targets}
            time.sleep(10)
            idle = {t.name: (cpu_seconds(t.proc.pid) - idle_before[t.name]) / 10 for t in targets}
        finally:
            for t in targets:
                t.stop()

    print(f"# {time.strftime('%Y-%m-%d')} on {os.uname().nodename}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print()
    print("| scenario | agent | series | RSS MiB | CPU s / 1000 scrapes | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for scenario, results in scenarios.items():
        for agent, r in results.items():
            print(
                f"| {scenario} | {agent} | {r['series']} | {r['rss_mib']:.1f} | {r['cpu_per_1000']:.4f} "
                f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
            )
    print()
    print("| idle, no scrapes | CPU s / s |")
    print("|---|---|")
    for agent, cpu in idle.items():
        print(f"| {agent} | {cpu:.5f} |")
    print()
    print("| scenario | RSS ratio | CPU ratio | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    for scenario, results in scenarios.items():
        hw, ne = results["hostwatch"], results["node_exporter"]
        print(
            f"| {scenario} | {hw['rss_mib'] / ne['rss_mib']:.2f} | {hw['cpu_per_1000'] / ne['cpu_per_1000']:.2f} "
            f"| {hw['p50_ms'] / ne['p50_ms']:.2f} | {hw['p99_ms'] / ne['p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
