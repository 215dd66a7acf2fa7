#!/usr/bin/env python3
"""Test traffic generator: sends exact UDP patterns to one address and prints
what it sent, in wire bytes (payload + UDP 8 + IPv4 20 + Ethernet 14), as JSON.

  steady  RATE_MBIT for SECONDS, paced per millisecond
  bursts  COUNT bursts of BURST_MS each at BURST_RATE_MBIT, GAP_MS apart

Only for addresses inside network namespaces the test created, or loopback.
Bounded: it stops by itself after the pattern.
"""

import argparse
import json
import socket
import sys
import time

HEADERS = 8 + 20 + 14
# Microseconds a burst keeps from the millisecond boundaries it lies between.
EDGE_US = 200


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
    parser.add_argument("--burst-rate-mbit", type=float, default=800.0)
    parser.add_argument(
        "--threshold-mbit",
        type=float,
        help="also report the bursts the sends made on the wire at this threshold",
    )
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
        # Paced at BURST_RATE_MBIT, not as fast as the sender can go: every
        # millisecond of a burst then carries a known amount, a few times
        # the threshold whatever the machine's speed; behind schedule (a
        # pause), the sender catches up at once.
        # Each burst keeps EDGE clear of the millisecond boundaries of the
        # clock the BPF program counts by (CLOCK_MONOTONIC): the time a packet
        # is stamped here and the time it is counted in the kernel differ by
        # tens of microseconds, and a burst that began or ended mid-millisecond
        # would leave an edge millisecond near the threshold, in or out of the
        # burst by a packet or two. So a burst of BURST_MS is BURST_MS whole
        # milliseconds, each well above the threshold, and none beside it.
        per_ns = args.burst_rate_mbit * 1e6 / 8 / wire / 1e9
        edge = EDGE_US * 1000
        sent_ms = []
        for _ in range(args.count):
            packets = 0
            boundary = (time.monotonic_ns() // 1_000_000 + 1) * 1_000_000
            start = boundary + edge
            end = boundary + int(args.burst_ms * 1_000_000) - edge
            while time.monotonic_ns() < start:
                pass
            # The longest time between two sends: above a fraction of a
            # millisecond the sender was interrupted (the hypervisor took the
            # CPU, an interrupt) and the wire may show two bursts where one
            # was meant.
            last = start
            longest = 0
            while (now := time.monotonic_ns()) < end:
                if packets >= (now - start) * per_ns:
                    continue
                longest = max(longest, now - last)
                last = now
                sock.sendto(payload, target)
                # The kernel counts the packet inside sendto: somewhere in
                # the millisecond(s) from the call to its return.
                sent_ms.append((now // 1_000_000, time.monotonic_ns() // 1_000_000))
                packets += 1
            report["bursts"].append(
                {"packets": packets, "wire_bytes": packets * wire, "longest_pause_ms": longest / 1e6}
            )
            time.sleep(max(0.0, (boundary + args.gap_ms * 1e6 - time.monotonic_ns()) / 1e9))
        if args.threshold_mbit is not None:
            report["wire_bursts"] = wire_bursts(sent_ms, wire, args.threshold_mbit)
    json.dump(report, sys.stdout)


def wire_bursts(sent_ms, wire, threshold_mbit):
    """The bursts as a detector of 1 ms slots sees them: runs of consecutive
    milliseconds above the threshold, with their bytes and those of the
    milliseconds just before and after (below the threshold: the partial
    ones that open and close a burst, as the detector counts them). An
    interrupted sender makes other bursts than it meant (a pause splits one
    in two, or leaves a slow millisecond at an edge): this is what the wire
    carried all the same.

    A packet is placed in the millisecond its sendto began; one whose sendto
    ended in another (the sender was interrupted inside the call) may have
    been counted there instead. Each run says how many bytes of such packets
    begin or end inside it: by that much, the detector may see it differ."""
    per_ms = {}
    for began, _ in sent_ms:
        per_ms[began] = per_ms.get(began, 0) + wire
    above = threshold_mbit * 1e6 / 8 / 1000
    runs = []
    for ms in sorted(per_ms):
        if per_ms[ms] <= above:
            continue
        if runs and runs[-1]["end_ms"] == ms:
            runs[-1]["end_ms"] = ms + 1
            runs[-1]["bytes"] += per_ms[ms]
        else:
            runs.append({"start_ms": ms, "end_ms": ms + 1, "bytes": per_ms[ms]})
    for run in runs:
        run["bytes"] += per_ms.get(run["start_ms"] - 1, 0) + per_ms.get(run["end_ms"], 0)
        inside = range(run["start_ms"] - 1, run["end_ms"] + 1)
        run["uncertain_bytes"] = wire * sum(
            1 for began, ended in sent_ms if began != ended and (began in inside or ended in inside)
        )
    return [
        {"duration_ms": r["end_ms"] - r["start_ms"], "bytes": r["bytes"], "uncertain_bytes": r["uncertain_bytes"]}
        for r in runs
    ]


if __name__ == "__main__":
    main()
