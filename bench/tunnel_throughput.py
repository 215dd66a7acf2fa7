#!/usr/bin/env python3
"""Compression tunnels: throughput and CPU per GiB, for compressible and
random data, against the same transfer sent directly.

What: 1 GiB per transfer, from this script (the application) to a sink in a
network namespace of its own (`hwtbench`, joined by the veth pair
hwtb0/hwtbp0, 10.253.0.1 and 10.253.0.2), in four scenarios:

  direct        the script connects to the sink over the veth; no agent.
  tunnel lz4    through a client tunnel (mode "always") of the agent here, to
                the server tunnel of an agent inside the namespace, which
                forwards to the sink on the namespace's loopback.
  tunnel raw    the same path, through a second client tunnel in mode
                "near_allowance": this host has no ENA counters and no known
                baseline, so it never engages and the bytes pass as they are
                (what the relaying costs without lz4).

Data: "logs", generated JSON log lines like a storage node's (timestamps,
levels, object keys, sizes, latencies, a random 32-bit request id): a 64 MiB
buffer made once and sent 16 times (lz4's window is 64 KiB and the tunnel
compresses each chunk on its own, so the repetition gains nothing); and
"random", os.urandom, the same way. Both data sets go through each scenario;
"tunnel raw" runs on logs only.

How: rounds of all scenarios in rotating order; medians over rounds. Per
transfer: wall time from connect to the sink's answer (it reads to the end,
then answers the byte count), the veth's byte counters (both directions:
data, TCP/IP headers, acks), each agent's CPU (the sum of
/proc/PID/task/*/schedstat over the transfer, all threads: relaying, lz4,
collectors) and the tunnels' own lz4 CPU (the thread CPU clock around each
lz4 call, from hostwatch_compression_cpu_seconds_total). The server agent is
scraped on its veth address between transfers only, never during one.

Usage: bench/tunnel_throughput.py [--hostwatch target/release/hostwatch] [--rounds 3] [--gib 1]
Needs: root (ip netns, veth), iproute2, a release build.
"""

import argparse
import atexit
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import cpu_seconds, free_port

NETNS = "hwtbench"
HOST_IF, PEER_IF = "hwtb0", "hwtbp0"
HERE, THERE = "10.253.0.1", "10.253.0.2"
SINK_PORT, RELAY_PORT, SERVER_HTTP = 7501, 7401, 9979
BUFFER = 64 << 20

SINK = r"""
import socket, sys, threading


def serve(conn):
    total = 0
    buf = bytearray(1 << 20)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        total += n
    conn.sendall(b"%d\n" % total)
    conn.close()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(16)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def run(*argv, check=True):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def delete_net():
    if os.path.exists(f"/sys/class/net/{HOST_IF}"):
        run("ip", "link", "del", HOST_IF, check=False)
    if os.path.exists(f"/run/netns/{NETNS}"):
        run("ip", "netns", "del", NETNS, check=False)


def create_net():
    delete_net()  # leftovers of an interrupted run
    atexit.register(delete_net)
    run("ip", "netns", "add", NETNS)
    run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF, "netns", NETNS)
    run("ip", "addr", "add", f"{HERE}/30", "dev", HOST_IF)
    run("ip", "link", "set", HOST_IF, "up")
    run("ip", "-n", NETNS, "addr", "add", f"{THERE}/30", "dev", PEER_IF)
    run("ip", "-n", NETNS, "link", "set", PEER_IF, "up")
    run("ip", "-n", NETNS, "link", "set", "lo", "up")


def veth_bytes():
    total = 0
    for counter in ("tx_bytes", "rx_bytes"):
        with open(f"/sys/class/net/{HOST_IF}/statistics/{counter}") as f:
            total += int(f.read())
    return total


class Process:
    def __init__(self, name, argv, ready):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        atexit.register(self.stop)
        deadline = time.time() + 15
        while not ready():
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"{name} did not start:\n{self.log.read().decode(errors='replace')}")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return response.read().decode()


def value(text, series):
    match = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def log_lines(size):
    rng = random.Random(7)
    levels = ["info", "info", "info", "debug", "warn", "error"]
    services = ["storage-node", "replicator", "scrubber", "api-gateway"]
    messages = ["chunk stored", "chunk replicated to peer", "checksum verified", "request served",
                "slow disk write", "retrying upload part"]
    buckets = ["backups-eu-west-1", "ml-datasets", "logs-archive", "user-uploads"]
    parts, length, i = [], 0, 0
    while length < size:
        line = (
            f'{{"ts":"2026-11-25T10:{i // 36000 % 60:02}:{i // 600 % 60:02}.{rng.randrange(10**6):06}Z",'
            f'"level":"{rng.choice(levels)}","service":"{rng.choice(services)}",'
            f'"host":"ip-10-0-{rng.randrange(4)}-{rng.randrange(250)}","msg":"{rng.choice(messages)}",'
            f'"bucket":"{rng.choice(buckets)}","key":"db/2026/11/25/part-{i:06}.parquet",'
            f'"bytes":{4096 << rng.randrange(12)},"latency_ms":{rng.randrange(200)}.{rng.randrange(10)},'
            f'"request_id":"{rng.getrandbits(32):08x}"}}\n'
        ).encode()
        parts.append(line)
        length += len(line)
        i += 1
    return b"".join(parts)[:size]


def transfer(address, data, total):
    """Sends `total` bytes of `data` (repeated) to `address`, half-closes,
    and waits for the sink's count. Returns seconds."""
    view = memoryview(data)
    start = time.perf_counter()
    with socket.create_connection(address) as conn:
        sent = 0
        while sent < total:
            piece = view[: min(len(view), total - sent)]
            conn.sendall(piece)
            sent += len(piece)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                break
            answer += chunk
    elapsed = time.perf_counter() - start
    if int(answer) != total:
        raise RuntimeError(f"the sink got {answer!r} of {total} bytes")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: ip netns and veth")
    hostwatch = os.path.abspath(args.hostwatch)
    total = int(args.gib * (1 << 30))
    create_net()
    work = tempfile.mkdtemp(prefix="hostwatch-tunnel-bench-")

    Process("sink", ["ip", "netns", "exec", NETNS, sys.executable, "-c", SINK, str(SINK_PORT)],
            ready=lambda: run("ip", "netns", "exec", NETNS, "ss", "-ltn", f"sport = :{SINK_PORT}").stdout.count("\n") > 1)

    quiet = "[collectors.netburst]\nenabled = false\n\n"
    server_toml = os.path.join(work, "server.toml")
    with open(server_toml, "w") as f:
        f.write(quiet + f'[[compression.tunnel]]\nname = "bench"\nside = "server"\n'
                f'listen = "{THERE}:{RELAY_PORT}"\nconnect = "127.0.0.1:{SINK_PORT}"\n')
    server_http = f"{THERE}:{SERVER_HTTP}"
    server = Process("server agent", ["ip", "netns", "exec", NETNS, hostwatch, "run", "--config", server_toml,
                                      "--listen", server_http],
                     ready=lambda: "hostwatch_compression_tunnel_up" in try_scrape(server_http))

    lz4_port, raw_port, client_http = free_port(), free_port(), f"127.0.0.1:{free_port()}"
    client_toml = os.path.join(work, "client.toml")
    with open(client_toml, "w") as f:
        f.write(quiet)
        for name, port, mode in (("lz4", lz4_port, "always"), ("raw", raw_port, "near_allowance")):
            f.write(f'[[compression.tunnel]]\nname = "{name}"\nside = "client"\nlisten = "127.0.0.1:{port}"\n'
                    f'connect = "{THERE}:{RELAY_PORT}"\nmode = "{mode}"\n\n')
    client = Process("client agent", [hostwatch, "run", "--config", client_toml, "--listen", client_http],
                     ready=lambda: "hostwatch_compression_tunnel_up" in try_scrape(client_http))
    if value(scrape(client_http), 'hostwatch_compression_engaged{tunnel="raw"}') != 0.0:
        sys.exit("the near_allowance tunnel is engaged on this host: 'tunnel raw' would not be raw")

    data = {"logs": log_lines(BUFFER), "random": os.urandom(BUFFER)}
    scenarios = [
        ("direct", "logs", (THERE, SINK_PORT), None),
        ("direct", "random", (THERE, SINK_PORT), None),
        ("tunnel lz4", "logs", ("127.0.0.1", lz4_port), "lz4"),
        ("tunnel lz4", "random", ("127.0.0.1", lz4_port), "lz4"),
        ("tunnel raw", "logs", ("127.0.0.1", raw_port), "raw"),
    ]
    results = {(name, kind): [] for name, kind, _, _ in scenarios}
    for round_ in range(args.rounds):
        order = scenarios[round_ % len(scenarios):] + scenarios[: round_ % len(scenarios)]
        for name, kind, address, tunnel in order:
            before_text = (scrape(client_http), scrape(server_http))
            cpu_before = (cpu_seconds(client.proc.pid), cpu_seconds(server.proc.pid))
            veth_before = veth_bytes()
            seconds = transfer(address, data[kind], total)
            veth = veth_bytes() - veth_before
            cpu = (cpu_seconds(client.proc.pid) - cpu_before[0], cpu_seconds(server.proc.pid) - cpu_before[1])
            after_text = (scrape(client_http), scrape(server_http))
            lz4 = [None, None]
            if tunnel:
                # The agents publish their tunnel counters once a second:
                # wait until both show the whole transfer.
                raw = (f'hostwatch_compression_bytes_total{{tunnel="{tunnel}",side="raw"}}',
                       'hostwatch_compression_bytes_total{tunnel="bench",side="raw"}')
                deadline = time.time() + 5
                while any(value(after_text[i], raw[i]) - value(before_text[i], raw[i]) < total for i in (0, 1)):
                    if time.time() > deadline:
                        raise RuntimeError("the tunnels' counters did not show the transfer")
                    time.sleep(0.2)
                    after_text = (scrape(client_http), scrape(server_http))
                for side, series in enumerate((f'hostwatch_compression_cpu_seconds_total{{tunnel="{tunnel}"}}',
                                               'hostwatch_compression_cpu_seconds_total{tunnel="bench"}')):
                    lz4[side] = value(after_text[side], series) - value(before_text[side], series)
                corrupt = value(after_text[1], 'hostwatch_compression_corrupt_frames_total{tunnel="bench"}')
                if corrupt:
                    raise RuntimeError(f"{corrupt} corrupt frames")
            results[(name, kind)].append((seconds, veth, cpu, lz4))
            print(f"round {round_ + 1} {name:10} {kind:6}: {seconds:6.2f} s, {total / seconds / (1 << 20):7.1f} MiB/s,"
                  f" veth {veth / total:.4f} of the data, agent CPU {cpu[0]:.2f} + {cpu[1]:.2f} s", file=sys.stderr)

    gib = total / (1 << 30)
    uname = os.uname()
    print(f"Run: {time.strftime('%Y-%m-%d')} on {uname.nodename}, kernel {uname.release}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds of {gib:g} GiB per scenario, medians\n")
    print("| scenario | data | MiB/s | veth bytes / data bytes | client agent CPU s / GiB | server agent CPU s / GiB "
          "| lz4 CPU s / GiB, client (compress) | lz4 CPU s / GiB, server (decompress) |")
    print("|---|---|---|---|---|---|---|---|")
    direct_speed = {}
    for name, kind, _, _ in scenarios:
        rows = results[(name, kind)]
        med = lambda f: statistics.median(f(row) for row in rows)
        speed = total / med(lambda r: r[0]) / (1 << 20)
        if name == "direct":
            direct_speed[kind] = speed
        lz4 = "" if rows[0][3][0] is None else f"{med(lambda r: r[3][0]) / gib:.3f}"
        lz4_server = "" if rows[0][3][1] is None else f"{med(lambda r: r[3][1]) / gib:.3f}"
        agents = ("", "") if name == "direct" else (f"{med(lambda r: r[2][0]) / gib:.3f}", f"{med(lambda r: r[2][1]) / gib:.3f}")
        print(f"| {name} | {kind} | {speed:.0f} | {med(lambda r: r[1]) / total:.4f} | {agents[0]} | {agents[1]} "
              f"| {lz4} | {lz4_server} |")
    print()
    for name, kind, _, _ in scenarios:
        if name != "direct":
            speed = total / statistics.median(r[0] for r in results[(name, kind)]) / (1 << 20)
            print(f"- {name}, {kind}: {speed / direct_speed[kind]:.2f}x the direct throughput")


def try_scrape(address):
    try:
        return scrape(address)
    except OSError:
        return ""


if __name__ == "__main__":
    main()
