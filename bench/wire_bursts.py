#!/usr/bin/env python3
"""Where an upload's busiest milliseconds come from, read from a packet capture
of the veth that bench/s3_proxy_vs_sdk.py creates.

What: reads a pcap (Ethernet, IPv4 TCP; headers are enough, e.g. tcpdump -s
96) and takes the TCP payload that SOURCE sent as the upload. Prints

  - per transfer (sends of a frame or more, apart by under 200 ms): its
    payload rate, the busiest millisecond and the 99th percentile as
    multiples of the limit's millisecond, and how many are above the
    issue's goal (1.5x, PEAK_GOAL in common.py);
  - the busiest milliseconds (fixed 1 ms slots from the first packet), each
    with the slots before it and every packet around it: direction,
    connection (the source's port), payload, the acknowledgement number and
    the window the server advertised;
  - a replay of those sends through a token account of RATE with depths of
    1.5, 2 and 2.5 times the limit's millisecond (the proxy's real-time
    account is 1.5 deep, see shaping/src/bucket.rs): how many sends exceed
    it, and by how much at worst. Sends that exceed the 1.5-deep account left
    the host bunched beyond what the proxy's own accounts let it write.

Usage: bench/wire_bursts.py PCAP [--source 10.253.0.1] [--rate-mbit 200] [--top 4]
Capture: start `tcpdump -i hwbs3 -s 96 -w PCAP` once the bench has made hwbs3
(tcpdump from Debian). Needs nothing else; no root to read the file.
"""

import argparse
import collections
import struct

from common import PEAK_GOAL, percentile

ETHERNET, LINUX_SLL = 1, 113


def packets(path):
    """(seconds, source address, source port, destination port, ack, window, payload)."""
    with open(path, "rb") as f:
        header = f.read(24)
        magic, linktype = struct.unpack("<I", header[:4])[0], struct.unpack("<I", header[20:24])[0]
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = {ETHERNET: 14, LINUX_SLL: 16}.get(linktype)
        if link is None:
            raise SystemExit(f"{path}: link type {linktype} is neither Ethernet nor Linux cooked capture")
        while len(record := f.read(16)) == 16:
            seconds, fraction, captured, _ = struct.unpack("<IIII", record)
            frame = f.read(captured)
            if frame[link - 2:link] != b"\x08\x00":
                continue
            ip = frame[link:]
            if ip[9] != 6:
                continue
            ihl, total = (ip[0] & 15) * 4, struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport, _, ack = struct.unpack(">HHII", tcp[:12])
            window = struct.unpack(">H", tcp[14:16])[0]
            yield (seconds + fraction / scale, ".".join(map(str, ip[12:16])), sport, dport, ack, window,
                   total - ihl - (tcp[12] >> 4) * 4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pcap")
    parser.add_argument("--source", default="10.253.0.1", help="the uploading side's address")
    parser.add_argument("--rate-mbit", type=float, default=200)
    parser.add_argument("--top", type=int, default=4, help="busiest milliseconds to list")
    args = parser.parse_args()
    every = list(packets(args.pcap))
    if not every:
        raise SystemExit("no IPv4 TCP packets in the capture")
    start = every[0][0]
    per_ms = args.rate_mbit * 1e6 / 8 / 1000
    sends = [((p[0] - start) * 1000, p[6]) for p in every if p[1] == args.source and p[6] > 0]
    slots = collections.Counter()
    for ms, payload in sends:
        slots[int(ms)] += payload

    # Transfers: sends of at least a frame's payload, apart by under 200 ms.
    runs, run = [], []
    for ms, payload in sends:
        if payload < 1000:
            continue
        if run and ms - run[-1] > 200:
            runs.append(run)
            run = []
        run.append(ms)
    runs.append(run)
    for run in filter(None, runs):
        every_ms = [slots.get(ms, 0) for ms in range(int(run[0]), int(run[-1]) + 1)]
        print(f"transfer at {run[0]:.0f} ms, {len(every_ms)} ms: {sum(every_ms) * 8 / len(every_ms) / 1000:.1f} Mbit/s,"
              f" peak {max(every_ms) / per_ms:.2f}x, p99 {percentile(every_ms, 99) / per_ms:.2f}x,"
              f" {sum(b > PEAK_GOAL * per_ms for b in every_ms)} ms above {PEAK_GOAL}x")
    print()
    for slot, payload in sorted(slots.items(), key=lambda s: -s[1])[:args.top]:
        before = ", ".join(f"{slots.get(ms, 0) / per_ms:.2f}" for ms in range(slot - 5, slot))
        print(f"ms {slot}: {payload} B = {payload / per_ms:.2f}x (the 5 ms before: {before})")
        for seconds, address, sport, dport, ack, window, payload in every:
            ms = (seconds - start) * 1000
            if slot - 2 <= ms < slot + 1:
                out = address == args.source
                print(f"  {ms:11.3f} {'->' if out else '<-'} conn {sport if out else dport}"
                      f" payload {payload:6d} ack {ack} window {window}")

    print(f"\n{len(sends)} sends from {args.source}, replayed through an account of {args.rate_mbit:g} Mbit/s:")
    for depths in (1.5, 2.0, 2.5):
        depth, paid, over, worst = depths * per_ms, float("-inf"), 0, 0.0
        for ms, payload in sends:
            paid = max(paid, ms - depth / per_ms) + payload / per_ms
            if paid > ms:
                over += 1
                worst = max(worst, (paid - ms) * per_ms)
        print(f"  {depths:g} ms deep: {over} sends exceed it, the worst by {worst:.0f} B")


if __name__ == "__main__":
    main()
