#!/usr/bin/env python3
"""What the stalls collector's BPF programs cost the traced operations.

Runs syscall loops (bench/stalls_loops.c, compiled here with cc) with the
agent's `stalls` collector attached and with no agent at all, interleaved in
one run: rounds alternate off/on (the order flips every round), each loop
runs SECONDS per round, and the medians are compared. Throughput is per
second of the loop's own CPU time, so other work on a shared machine
(preemption) does not count against either side. The agent runs with
every other collector disabled, so only the stalls programs are attached:
mmap_lock start_locking and acquire_returned, sys_enter_openat and openat2.

  mmap        mmap + munmap of an anonymous page: 2 mmap_lock write
              acquisitions, each a start_locking and an acquire_returned hit
  open_tmp    openat + close of a /tmp path (the filter's /proc/ check fails)
  open_proc   openat + close of /proc/self/stat (whole path read, no match)
  open_smaps  openat + close of /proc/self/smaps_rollup (never read): a match,
              one ring buffer event
  getppid     an untraced syscall: what enabling any syscall tracepoint
              costs every syscall

Usage (root): bench/stalls_cost.py [--hostwatch target/release/hostwatch]
    [--rounds 5] [--seconds 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import free_port

LOOPS = ["mmap", "open_tmp", "open_proc", "open_smaps", "getppid"]
# Traced events per loop iteration, for the per-event column.
EVENTS = {"mmap": (2, "lock acquisition"), "open_tmp": (1, "openat"), "open_proc": (1, "openat"),
          "open_smaps": (1, "openat"), "getppid": (1, "syscall")}
CONFIG = """
[agent]
listen = "127.0.0.1:{port}"
[collectors.cpu]
enabled = false
[collectors.memory]
enabled = false
[collectors.pressure]
enabled = false
[collectors.cgroups]
enabled = false
[collectors.netdev]
enabled = false
[collectors.ethtool]
enabled = false
[collectors.process]
enabled = false
[collectors.hotspots]
enabled = false
"""


def start_agent(binary, workdir, port):
    config = os.path.join(workdir, "hostwatch.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port))
    agent = subprocess.Popen([binary, "run", "--config", config], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            if 'hostwatch_collector_up{collector="stalls"} 1.0' in text:
                return agent
        except OSError:
            pass
        time.sleep(0.1)
    agent.kill()
    sys.exit("the agent's stalls collector did not come up (root? tracefs mounted?)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as workdir:
        loops = os.path.join(workdir, "stalls_loops")
        subprocess.run(["cc", "-O2", "-o", loops, os.path.join(here, "stalls_loops.c")], check=True)
        results = {(loop, side): [] for loop in LOOPS for side in ("off", "on")}
        for round_ in range(args.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for side in order:
                agent = start_agent(args.hostwatch, workdir, free_port()) if side == "on" else None
                try:
                    for loop in LOOPS:
                        out = subprocess.run([loops, loop, str(args.seconds)], check=True,
                                             capture_output=True, text=True).stdout
                        results[(loop, side)].append(float(out))
                finally:
                    if agent:
                        agent.terminate()
                        agent.wait()
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    uname = os.uname()
    print(f"Run: {time.strftime('%Y-%m-%d')} on {uname.nodename}, kernel {uname.release}, "
          f"{os.cpu_count()} CPUs; {args.rounds} rounds of {args.seconds:g} s per loop and side\n")
    print("| loop | ops per CPU-s, off (median) | on (median) | throughput | added CPU ns per op | added ns per event |")
    print("|---|---|---|---|---|---|")
    for loop in LOOPS:
        off = statistics.median(results[(loop, "off")])
        on = statistics.median(results[(loop, "on")])
        added = 1e9 / on - 1e9 / off
        per, unit = EVENTS[loop]
        print(f"| {loop} | {off:,.0f} | {on:,.0f} | {on / off - 1:+.1%} | {added:.0f} | "
              f"{added / per:.0f} per {unit} |")
    spread = {k: (min(v), max(v)) for k, v in results.items()}
    print("\nPer-round spread (min-max ops/s):", file=sys.stderr)
    for (loop, side), (low, high) in spread.items():
        print(f"  {loop} {side}: {low:,.0f} - {high:,.0f}", file=sys.stderr)


if __name__ == "__main__":
    main()
