#!/usr/bin/env python3
"""S3 pacing: hostwatch's proxy against the SDKs' own max_bandwidth against no
limit, side by side in one run; then the proxy's overhead at no limit.

What, part 1 (root): a network namespace `hwbenchs3` joined by the veth pair
hwbs3 / peer0 (10.253.0.1 here, 10.253.0.2 there) runs moto's S3 server; the
script deletes both at exit (try/finally and atexit; leftovers of an
interrupted run are removed at start). boto3 and aws-cli (tests/traffic/
s3_transfer.py, from the test venv) upload then download one object per
transfer, in three modes, interleaved per client and direction:
  hostwatch   through the agent's proxy (HTTP_PROXY), policy at RATE
  sdk         the SDK's own limit at RATE: boto3 TransferConfig.max_bandwidth,
              aws-cli s3.max_bandwidth
  none        no limit
The wire is measured by the same agent's netburst collector on hwbs3 (eBPF,
bytes per millisecond), joined from /debug/netslots polled every 150 ms: the
1 ms peak (as a multiple of RATE x 1 ms), the 99th percentile of the
milliseconds from the transfer's first busy one to its last and how many of
them are above 1.5x, the median 100 ms rate, and the whole transfer's rate
(first to last millisecond with a full frame); the client's own rate
(object bytes over its transfer time) beside them.

What, part 2 (no root): overhead at no limit on loopback. A source on
127.0.0.1 sends BYTES to each connection (socket.sendfile from a file in
/dev/shm); a sink reads with 1 MiB recv_into, directly or through a CONNECT
tunnel of the proxy (a policy without rates). Rounds alternate direct and
proxied (and, with --compare BINARY, through a second agent built from other
code, for a before-and-after in the same rounds). The source and the sink
share CPU 0 and the agent runs on CPU 1:
on two cores three busy parties would otherwise measure the scheduler (the
proxy doubles the loopback TCP work, which the kernel charges to whoever
sends). Reported: throughput of each, their ratio, and the agent's CPU
seconds per GiB relayed (utime + stime of the agent over the proxied blocks).
The source's and the sink's sockets use the host's congestion control
(net.ipv4.tcp_congestion_control), or --congestion's (TCP_CONGESTION on
this script's own sockets; nothing of the host changes). The proxy runs
cubic on its loopback sockets whatever the host's default.

Usage: bench/s3_proxy_vs_sdk.py [--hostwatch target/release/hostwatch]
           [--rate-mbit 200] [--size-mib 64] [--overhead-gib 2] [--rounds 3] [--compare BINARY]
           [--burst 1ms] [--upload-burst 500us] [--socket-buffer 2ms] [--limiters hostwatch,sdk,none] [--slots DIR]
           [--overhead-only | --pacing-only] [--unpinned] [--congestion cubic]
Needs: root for part 1 (skipped otherwise), packaging/install-deps.sh --test
(iproute2, the test venv with moto, boto3, aws-cli).
"""

import argparse
import atexit
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from common import PEAK_GOAL, free_port, percentile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETNS, HOST_IF, HERE, THERE = "hwbenchs3", "hwbs3", "10.253.0.1", "10.253.0.2"
VENV = os.environ.get("HOSTWATCH_TEST_VENV", os.path.expanduser("~/.cache/hostwatch-test-venv"))
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def teardown():
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)


def setup_netns():
    teardown()
    atexit.register(teardown)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "peer0", "netns", NETNS)
    sh("ip", "addr", "add", f"{HERE}/30", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "-n", NETNS, "addr", "add", f"{THERE}/30", "dev", "peer0")
    sh("ip", "-n", NETNS, "link", "set", "peer0", "up")
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")


def wait_port(host, port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {host}:{port}")


class Agent:
    def __init__(self, binary, config_text, cpu=None):
        self.dir = tempfile.mkdtemp(prefix="hostwatch-bench-s3-")
        self.port = free_port()
        path = os.path.join(self.dir, "hostwatch.toml")
        with open(path, "w") as out:
            out.write(config_text)
        self.proc = subprocess.Popen(
            [binary, "run", "--config", path, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )
        atexit.register(self.stop)
        wait_port("127.0.0.1", self.port)

    def get(self, path):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return response.read()

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


class Wire:
    """Bytes per millisecond on HOST_IF, joined from /debug/netslots."""

    def __init__(self, agent):
        self.agent, self.slots, self.stopped, self.since = agent, {}, False, None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def poll(self):
        for series in json.loads(self.agent.get("/debug/netslots")):
            if series["interface"] != HOST_IF:
                continue
            values = series["bytes_per_ms"]
            first = series["end_ms"] - len(values)
            # The first document's second is from before the transfer.
            if self.since is None:
                self.since = series["end_ms"]
            for i, value in enumerate(values):
                if value is not None and first + i >= self.since:
                    self.slots[(series["direction"], first + i)] = value

    def run(self):
        while not self.stopped:
            self.poll()
            time.sleep(0.15)
        time.sleep(0.3)
        self.poll()

    def stop(self, direction, per_ms, keep=None):
        """The transfer's 1 ms peak, median 100 ms and whole rates, and, over
        its milliseconds from the first busy one to the last, the 99th
        percentile and how many are above PEAK_GOAL x per_ms."""
        self.stopped = True
        self.thread.join()
        slots = sorted((ms, b) for (d, ms), b in self.slots.items() if d == direction)
        if keep:
            with open(keep, "w") as out:
                json.dump(slots, out)
        busy = [ms for ms, b in slots if b >= 1500]
        if not busy:
            return 0, 0.0, 0.0, 0, 0, 0
        first, last = busy[0], busy[-1]
        span = {ms: b for ms, b in slots if first <= ms <= last}
        windows = [sum(span.get(ms, 0) for ms in range(start, start + 100)) * 8 * 10 for start in range(first, last - 99, 100)]
        whole = sum(span.values()) * 8 * 1000 / (last - first + 1)
        every_ms = [span.get(ms, 0) for ms in range(first, last + 1)]
        above = sum(b > PEAK_GOAL * per_ms for b in every_ms)
        return (max(b for _, b in slots), statistics.median(windows) if windows else whole, whole,
                percentile(every_ms, 99), above, len(every_ms))


def transfer(client, mode, key, size, proxy_port=None, max_bandwidth=0):
    env = dict(NO_PROXY_ENV)
    if proxy_port:
        env["HTTP_PROXY"] = env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy_port}"
    args = [os.path.join(VENV, "bin/python"), os.path.join(ROOT, "tests/traffic/s3_transfer.py"), mode, key,
            "--client", client, "--endpoint", f"http://{THERE}", "--size", str(size)]
    if max_bandwidth:
        args += ["--max-bandwidth", str(max_bandwidth)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{client} {mode} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def part_one(args):
    rate = args.rate_mbit * 1e6
    per_ms = rate / 8 / 1000
    size = args.size_mib << 20
    setup_netns()
    moto = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, os.path.join(VENV, "bin/moto_server"), "-H", THERE, "-p", "80"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    atexit.register(moto.kill)
    wait_port(THERE, 80)
    proxy_port = free_port()
    agent = Agent(args.hostwatch, f"""
[collectors.netburst]
include = "{HOST_IF}"
record = false
[shaping]
enabled = true
listen = "127.0.0.1:{proxy_port}"
socket_buffer = "{args.socket_buffer}"
[[shaping.policy]]
name = "bench"
hosts = ["{THERE}"]
download = "{args.rate_mbit}Mbit"
upload = "{args.rate_mbit}Mbit"
burst = {{ download = "{args.burst}", upload = "{args.upload_burst or args.burst}" }}
""")
    time.sleep(3)  # netburst loads its program and watches the veth
    rows = []
    for client in ["boto3", "awscli"]:
        for mode in ["put", "get"]:
            direction = "transmit" if mode == "put" else "receive"
            for limiter in args.limiters.split(","):
                key = f"{client}-{limiter}"
                wire = Wire(agent)
                done = transfer(client, mode, key, size,
                                proxy_port=proxy_port if limiter == "hostwatch" else None,
                                max_bandwidth=rate / 8 if limiter == "sdk" else 0)
                keep = args.slots and os.path.join(args.slots, f"{client}-{mode}-{limiter}.json")
                peak, median, whole, p99, above, count = wire.stop(direction, per_ms, keep)
                by_client = done["bytes"] * 8 / done["seconds"]
                rows.append((client, mode, limiter, by_client, median, whole, peak, peak / per_ms, p99 / per_ms, above, count))
                print(f"  {client} {mode} {limiter}: client {by_client / 1e6:.1f} Mbit/s, wire median {median / 1e6:.1f}, "
                      f"whole {whole / 1e6:.1f}, 1 ms peak {peak} B = {peak / per_ms:.2f}x, p99 {p99 / per_ms:.2f}x, "
                      f"{above} of {count} ms above {PEAK_GOAL}x", file=sys.stderr)
    agent.stop()
    moto.kill()
    teardown()
    burst = args.burst + (f", uploads {args.upload_burst}" if args.upload_burst else "")
    print(f"\nLimit {args.rate_mbit} Mbit/s ({per_ms:.0f} B per ms), hostwatch burst {burst}, object {args.size_mib} MiB, one transfer each.\n")
    print("| client | direction | limiter | client Mbit/s (x limit) | wire median 100 ms Mbit/s | wire whole transfer Mbit/s "
          f"| 1 ms peak B | peak / limit's ms | p99 ms / limit's ms | ms above {PEAK_GOAL}x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for client, mode, limiter, by_client, median, whole, peak, ratio, p99, above, count in rows:
        direction = "upload" if mode == "put" else "download"
        print(f"| {client} | {direction} | {limiter} | {by_client / 1e6:.1f} ({by_client / rate:.2f}) | {median / 1e6:.1f} | "
              f"{whole / 1e6:.1f} | {peak} | {ratio:.2f} | {p99:.2f} | {above} of {count} |")


def source(listener, path, stop):
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn, open(path, "rb") as data:
            try:
                conn.sendfile(data)
            except OSError:
                pass


def sink(sock, total):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    while got < total:
        n = sock.recv_into(view)
        if n == 0:
            break
        got += n
    return got


def congestion(sock, algorithm):
    if algorithm:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())


def host_congestion():
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()


def part_two(args):
    # The source and the sink share CPU 0, the agent has CPU 1: on two cores,
    # three busy parties would otherwise measure the scheduler, not the proxy.
    if not args.unpinned:
        os.sched_setaffinity(0, {0})
    total = args.overhead_gib << 30
    path = f"/dev/shm/hostwatch-bench-{os.getpid()}"
    with open(path, "wb") as out:
        block = os.urandom(1 << 20)
        for _ in range(total >> 20):
            out.write(block)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    listener = socket.socket()
    congestion(listener, args.congestion)  # inherited by the source's connections
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    target = listener.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=source, args=(listener, path, stop), daemon=True).start()
    binaries = {"proxy": args.hostwatch}
    if args.compare:
        binaries["proxy (compared)"] = args.compare
    agents, ports = {}, {}
    for way, binary in binaries.items():
        ports[way] = free_port()
        agents[way] = Agent(binary, f"""
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
[collectors.process]
enabled = false
[collectors.headroom]
enabled = false
[collectors.ethtool]
enabled = false
[collectors.instance]
enabled = false
[collectors.netburst]
enabled = false
[shaping]
enabled = true
listen = "127.0.0.1:{ports[way]}"
ports = [{target}]
[[shaping.policy]]
name = "loopback"
hosts = ["127.0.0.1"]
""", cpu=None if args.unpinned else 1)
    results = {way: [] for way in ["direct", *binaries]}
    cpu = {way: 0.0 for way in binaries}
    for _ in range(args.rounds):
        for way in results:
            sock = socket.socket()
            congestion(sock, args.congestion)
            if way == "direct":
                sock.connect(("127.0.0.1", target))
            else:
                sock.connect(("127.0.0.1", ports[way]))
                sock.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += sock.recv(1)
                assert head.startswith(b"HTTP/1.1 200"), head
            before = agents[way].cpu_seconds() if way in agents else 0.0
            start = time.perf_counter()
            got = sink(sock, total)
            elapsed = time.perf_counter() - start
            if way in agents:
                cpu[way] += agents[way].cpu_seconds() - before
            sock.close()
            assert got == total, (way, got)
            results[way].append(got / elapsed)
    stop.set()
    listener.close()
    for agent in agents.values():
        agent.stop()
    direct = statistics.median(results["direct"])
    gib = total * args.rounds / (1 << 30)
    pinning = "unpinned" if args.unpinned else "source and sink on CPU 0, agents on CPU 1"
    algorithm = args.congestion or f"{host_congestion()} (the host's default)"
    print(f"\nOverhead at no limit on loopback ({pinning}; source and sink: {algorithm}): "
          f"{args.overhead_gib} GiB per transfer, {args.rounds} rounds, median.\n")
    print("| path | binary | GB/s | x direct | agent CPU s per GiB |")
    print("|---|---|---|---|---|")
    print(f"| direct | | {direct / 1e9:.2f} | 1.00 | |")
    for way, binary in binaries.items():
        proxied = statistics.median(results[way])
        print(f"| through the proxy (CONNECT) | {binary} | {proxied / 1e9:.2f} | {proxied / direct:.2f} | {cpu[way] / gib:.3f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hostwatch", default=os.path.join(ROOT, "target/release/hostwatch"))
    parser.add_argument("--rate-mbit", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--overhead-gib", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", default="1ms", help="the policy's burst allowance")
    parser.add_argument("--upload-burst", help="the policy's burst allowance for uploads (default: --burst)")
    parser.add_argument("--socket-buffer", default="2ms", help="the proxy's upstream socket buffers, as time at the rate")
    parser.add_argument("--limiters", default="hostwatch,sdk,none")
    parser.add_argument("--slots", help="part 1: a directory to keep each transfer's bytes per ms on the veth in "
                                        "(CLIENT-MODE-LIMITER.json: [[ms, bytes], ...])")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--overhead-only", action="store_true", help="skip part 1")
    only.add_argument("--pacing-only", action="store_true", help="skip part 2")
    parser.add_argument("--unpinned", action="store_true", help="part 2 without CPU pinning")
    parser.add_argument("--congestion", help="part 2: the source's and sink's congestion control (default: the host's)")
    parser.add_argument("--compare", help="part 2: another hostwatch binary whose proxy runs in the same rounds")
    args = parser.parse_args()
    if args.slots:
        os.makedirs(args.slots, exist_ok=True)
    print(f"Run: {time.strftime('%Y-%m-%d')} on {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs")
    if args.overhead_only:
        pass
    elif os.geteuid() == 0:
        try:
            part_one(args)
        finally:
            teardown()
    else:
        print("part 1 skipped: needs root (network namespace, eBPF)", file=sys.stderr)
    if not args.pacing_only:
        part_two(args)


if __name__ == "__main__":
    main()
