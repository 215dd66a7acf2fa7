#!/usr/bin/env python3
"""Test traffic generator: sends exact UDP patterns to one address and prints
what it sent, in wire bytes (payload + UDP 8 + IPv4 20 + Ethernet 14), as JSON.

  steady  RATE_MBIT for SECONDS, paced per millisecond
  bursts  COUNT bursts of BURST_MS each at full speed, GAP_MS apart

Only for addresses inside network namespaces the test created, or loopback.
Bounded: it stops by itself after the pattern.
"""

import argparse
import json
import socket
import sys
import time

HEADERS = 8 + 20 + 14


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steady", "bursts"])
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, default=9)
    parser.add_argument("--payload", type=int, default=1400)
    parser.add_argument("--rate-mbit", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--burst-ms", type=float, default=5.0)
    parser.add_argument("--gap-ms", type=float, default=100.0)
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait first (to be moved into a cgroup)")
    args = parser.parse_args()

    time.sleep(args.start_delay)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"h" * args.payload
    wire = args.payload + HEADERS
    target = (args.dst, args.port)
    report = {"wire_bytes_per_packet": wire, "bursts": []}

    if args.mode == "steady":
        # At most one millisecond's share per millisecond: a sender that
        # oversleeps (a busy host) skips what it missed instead of catching
        # up in a burst, so "steady" never exceeds its rate in any millisecond.
        per_ms = args.rate_mbit * 1e6 / 8 / 1000 / wire
        sent = 0
        credit = 0.0
        last_ms = -1
        start = time.perf_counter()
        deadline = start + args.seconds
        while (now := time.perf_counter()) < deadline:
            ms = int((now - start) * 1000)
            if ms != last_ms:
                last_ms = ms
                credit = min(credit + per_ms, per_ms)
                while credit >= 1:
                    sock.sendto(payload, target)
                    sent += 1
                    credit -= 1
            time.sleep(0.0002)
        report["packets"] = sent
        report["wire_bytes"] = sent * wire
    else:
        for _ in range(args.count):
            packets = 0
            start = time.perf_counter()
            end = start + args.burst_ms / 1000
            # The longest time between two sends: above a fraction of a
            # millisecond the sender was interrupted (an IRQ storm, RT
            # throttling) and the wire may show two bursts where one was meant.
            last = start
            longest = 0.0
            while (now := time.perf_counter()) < end:
                longest = max(longest, now - last)
                last = now
                sock.sendto(payload, target)
                packets += 1
            report["bursts"].append(
                {"packets": packets, "wire_bytes": packets * wire, "longest_pause_ms": longest * 1000}
            )
            time.sleep(max(0.0, start + args.gap_ms / 1000 - time.perf_counter()))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
