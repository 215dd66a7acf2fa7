#!/usr/bin/env python3
"""Microburst detector overhead: what the netburst collector (its BPF program
on every packet, its agent folding the rings) costs the traffic it watches
and the CPU it takes.

Two measurements, as in the issue "eBPF pipeline and microburst detector":

1. Packet rate, with and without the detector, interleaved.
   iperf3 (Debian) UDP, 64-byte datagrams, unlimited rate (`-u -l 64 -b 0`),
   SECONDS per run, on three paths:
     lo        127.0.0.1 to 127.0.0.1
     veth out  from this namespace across the veth pair into the namespace
               the script creates (egress on the watched veth end)
     veth in   from the namespace to this one (ingress on the watched end)
   The rate read is the receiver's: datagrams that reached the server
   (iperf3 -J, end.sum_received: bytes / 64) per second. The sender's rate
   is shown beside it.
   "with": a hostwatch agent runs with only the netburst collector (every
   other collector that `hostwatch collectors` lists is disabled), include
   "lo|VETH", recordings in a temp dir, default threshold, interval and
   hooks (TCX on this kernel: a program on each watched interface, egress
   and ingress).
   "without": no agent at all, so no BPF program of ours is attached.
   "tracepoints": the same agent with `hooks = "tracepoints"`, what kernels
   without TCX get: three global tp_btf programs that every packet of the
   host runs, turned away by an interface pre-filter when not watched.
   "unwatched": the "with" agent with an include that matches no
   interface: what a host's other interfaces pay (with TCX, nothing is
   attached to them).
   ROUNDS rounds; each runs the four states, all three paths in each, the
   state order rotating from round to round. The agent is started afresh
   for each block that has one and stopped after it.
   Compared: the median rate per path and state; loss = 1 - median with /
   median without (and likewise for the other states), and beside it the median of
   the per-round ratios.
   Also, because a shared machine makes rates noisy while CPU time per
   packet hardly depends on how much CPU others take: the sender side's CPU
   per datagram sent, i.e. the iperf3 client's CPU (its rusage) plus the
   ksoftirqd threads' (schedstat) over the run, divided by the datagrams
   sent. Every hook runs there: the transmit hooks in the sending task, the
   receive hook in the softirq that follows it on the same CPU
   (this kernel has no IRQ_TIME_ACCOUNTING, so softirq time is charged to the
   task it interrupts, or to ksoftirqd). with / without of that cost is the
   rate a sender-bound flow would lose, and with - without the time the
   hooks add to each datagram.

2. Agent CPU at a steady 1 Gbit/s.
   iperf3 UDP `-b 1G -l 1400` across the veth pair (this namespace to the
   other) for LOAD_SECONDS while the agent watches "lo|VETH"; before and
   after it IDLE_SECONDS/2 each with no traffic (idle cost). CPU is the sum
   of /proc/PID/task/*/schedstat over the agent's threads, as % of one core.
   Twice: with the threshold at 10 Gbit/s (steady traffic well below it: no
   burst, the normal case on a host whose baseline is above 1 Gbit/s) and
   with the default threshold (100 % of the instance baseline; off EC2 that
   is the 1 Gbit/s fallback, i.e. the traffic's own rate, so milliseconds
   straddle it: bursts, events, recordings: the detector's busiest case).
   The BPF programs run in the kernel on the sending and receiving CPUs and
   are not in the agent's CPU; during this phase only, the script turns on
   kernel.bpf_stats_enabled (restored at exit) and reads run_cnt and
   run_time_ns of the agent's programs (/proc/PID/fdinfo; names from
   bpftool), to show their cost per packet and as % of one core. Stats
   are off during the packet-rate phase, where they would add their own
   per-run cost.

Pinning: unless --no-pin, every iperf3 client runs on CPU 0 and every server
on CPU 1 (taskset), in every state; the agent is not pinned (it competes as
it would on a host). Noise: the machine is shared. Before measuring, the
script waits (polling every 30 s, at most --max-wait seconds) for the
1-minute load average to fall below 1.0 and for no other agent's netburst
programs to be loaded (their hooks would slow every state), then measures
anyway; it checks those programs again at each block. During the
run a sampler counts, once a second, the runnable user tasks that are not
the benchmark's own (the agent, iperf3, this script): "others running",
reported with the load averages.

Network: a namespace (NETNS) and a veth pair VETH/PEER with 10.252.0.1/30
here and 10.252.0.2/30 there; nothing else is routed. Only 127.0.0.1 and those
two addresses receive traffic. Both are deleted at exit (finally, atexit;
SIGTERM, SIGHUP and SIGINT end the run through them; leftovers of an
interrupted run are removed at start). Every loop and wait is bounded.

Usage: bench/netburst_overhead.py [--hostwatch target/release/hostwatch]
       [--rounds 6] [--seconds 4] [--load-seconds 20] [--idle-seconds 20]
       [--no-pin] [--no-bpf-stats] [--max-wait 900] [--skip-rate | --skip-cpu]
Needs: root (BPF, ip netns), iproute2, iperf3, bpftool (for the BPF
programs' cost; skipped without it), util-linux (taskset); all installed by
packaging/install-deps.sh --test.
"""

import argparse
import atexit
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import free_port, cpu_seconds

NETNS = "hwnbbench"
VETH = "hwnb0"
PEER = "hwnbp0"
HERE = "10.252.0.1"
THERE = "10.252.0.2"
PREFIX = 30
# An include that matches no interface.
UNWATCHED = "hwnbnone"
STATES = ("without", "with", "tracepoints", "unwatched")
DATAGRAM = 64
STEADY_DATAGRAM = 1400
CLIENT_CPU, SERVER_CPU = 0, 1
BPF_PROGRAMS = ("hw_net_tc_egress", "hw_net_tc_ingress", "hw_net_xmit", "hw_net_owner", "hw_net_receive")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"

# Processes the benchmark started; the sampler leaves them out of "others".
OURS = {os.getpid()}


def run(*argv, check=True):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def quiet(*argv):
    return subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Net:
    """The namespace and the veth pair between it and this namespace."""

    def create(self):
        self.delete()  # leftovers of an interrupted run
        conflict = run("ip", "-4", "-o", "addr", "show").stdout
        if re.search(r"\b10\.252\.0\.[0-3]/", conflict):
            sys.exit(f"10.252.0.0/{PREFIX} is already in use on this host:\n{conflict}")
        run("ip", "netns", "add", NETNS)
        run("ip", "link", "add", VETH, "type", "veth", "peer", "name", PEER, "netns", NETNS)
        run("ip", "addr", "add", f"{HERE}/{PREFIX}", "dev", VETH)
        run("ip", "link", "set", VETH, "up")
        run("ip", "-n", NETNS, "addr", "add", f"{THERE}/{PREFIX}", "dev", PEER)
        run("ip", "-n", NETNS, "link", "set", PEER, "up")
        run("ip", "-n", NETNS, "link", "set", "lo", "up")

    def delete(self):
        if os.path.exists(f"/sys/class/net/{VETH}"):
            quiet("ip", "link", "del", VETH)  # deletes the peer too
        if os.path.exists(f"/run/netns/{NETNS}"):
            quiet("ip", "netns", "del", NETNS)


class BpfStats:
    """kernel.bpf_stats_enabled, on for a while and always put back."""

    def __init__(self):
        self.saved = None

    def enable(self):
        with open(BPF_STATS) as f:
            self.saved = f.read().strip()
        with open(BPF_STATS, "w") as f:
            f.write("1")

    def restore(self):
        if self.saved is not None:
            with open(BPF_STATS, "w") as f:
                f.write(self.saved)
            self.saved = None


def bpf_program_ids(pid):
    """{prog_id: (run_cnt, run_time_ns)} of the BPF programs `pid` holds, from
    /proc/PID/fdinfo (Debian's bpftool lists no holders)."""
    programs = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except (FileNotFoundError, ValueError):
            continue
        if "prog_id" in info and "run_cnt" in info:
            programs[int(info["prog_id"])] = (int(info["run_cnt"]), int(info["run_time_ns"]))
    return programs


def netburst_programs():
    """{prog_id: name} of every netburst program loaded on this host (bpftool)."""
    shown = json.loads(run("bpftool", "prog", "show", "--json").stdout)
    return {p["id"]: p["name"] for p in shown if p.get("name") in BPF_PROGRAMS}


def bpf_programs(pid):
    """{name: (run_cnt, run_time_ns)} of the netburst programs `pid` holds."""
    names = netburst_programs()
    totals = {}
    for prog_id, (count, ns) in bpf_program_ids(pid).items():
        if prog_id in names:
            runs, nanoseconds = totals.get(names[prog_id], (0, 0))
            totals[names[prog_id]] = (runs + count, nanoseconds + ns)
    return totals


def bpf_delta(after, before):
    """Runs and nanoseconds per program between two bpf_programs() readings."""
    delta = {}
    for name, (runs, ns) in after.items():
        runs0, ns0 = before.get(name, (0, 0))
        delta[name] = (runs - runs0, ns - ns0)
    return delta


def bpf_sum(programs):
    return sum(r for r, _ in programs.values()), sum(n for _, n in programs.values())


def foreign_netburst(pid):
    """netburst programs loaded on this host that `pid` (our agent, or None)
    does not hold: another engineer's agent would hook every packet in both
    states."""
    ours = set(bpf_program_ids(pid)) if pid else set()
    return len(set(netburst_programs()) - ours)


def veth_counters():
    """(bytes, packets) the watched veth end has transmitted: what the detector counts."""
    values = []
    for name in ("tx_bytes", "tx_packets"):
        with open(f"/sys/class/net/{VETH}/statistics/{name}") as f:
            values.append(int(f.read()))
    return values


def ksoftirqd_pids():
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().startswith("ksoftirqd/"):
                    pids.append(int(pid))
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            pass
    return pids


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Sampler(threading.Thread):
    """Once a second: the 1-minute load average and the runnable user tasks
    that are not the benchmark's (kernel threads such as ksoftirqd, which
    our own traffic wakes, are left out)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []  # (phase, load1, others running)
        self.phase = None
        self.stopping = threading.Event()

    def others_running(self):
        count = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in OURS:
                continue
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    # fields[0] is the state, fields[1] the parent pid; kthreads descend from pid 2.
                    if fields[0] == "R" and fields[1] != "2" and pid != "2":
                        count += 1
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
        return count

    def run(self):
        while not self.stopping.wait(1.0):
            if self.phase is not None:
                self.samples.append((self.phase, load1(), self.others_running()))

    def summary(self, phase):
        rows = [s for s in self.samples if s[0] == phase]
        if not rows:
            return "no samples"
        loads = sorted(r[1] for r in rows)
        others = [r[2] for r in rows]
        return (
            f"1-min load {loads[0]:.2f} to {loads[-1]:.2f} (median {statistics.median(loads):.2f}); "
            f"others running {statistics.mean(others):.2f} on average, at most {max(others)}"
        )


def wait_for_quiet(max_wait, check_bpf):
    """Waits until the 1-minute load is below 1.0 and (with bpftool) no other
    netburst program is loaded, polling every 30 s, at most `max_wait`
    seconds. Returns (load at start, load at the end, seconds waited)."""
    first = load1()
    start = time.monotonic()

    def busy():
        return load1() >= 1.0 or (check_bpf and foreign_netburst(None) > 0)

    while busy() and time.monotonic() - start < max_wait:
        others = foreign_netburst(None) if check_bpf else "?"
        print(
            f"1-minute load {load1():.2f}, other netburst programs {others}: waiting "
            f"(at most {max_wait - (time.monotonic() - start):.0f} s more)",
            file=sys.stderr,
        )
        time.sleep(min(30, max(1, max_wait - (time.monotonic() - start))))
    return first, load1(), time.monotonic() - start


class Processes:
    """Long-running children (iperf3 servers, agents), stopped at exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kwargs):
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        OURS.add(proc.pid)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        OURS.discard(proc.pid)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc)


def pinned(cpu, pin):
    return ["taskset", "-c", str(cpu)] if pin else []


def in_netns():
    return ["ip", "netns", "exec", NETNS]


class Path:
    """One iperf3 path: a server kept running, clients started per run."""

    def __init__(self, name, server_ns, server_addr, client_ns, client_addr, processes, pin):
        self.name = name
        self.processes = processes
        self.server_addr, self.client_addr = server_addr, client_addr
        self.client_prefix = (in_netns() if client_ns else []) + pinned(CLIENT_CPU, pin)
        self.port = free_port()
        argv = (in_netns() if server_ns else []) + pinned(SERVER_CPU, pin)
        argv += ["iperf3", "-s", "-B", server_addr, "-p", str(self.port)]
        self.server = processes.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, seconds, rate, length):
        """One iperf3 UDP run; returns its JSON and CPU seconds: the client's
        (its rusage once reaped), the server's and the ksoftirqd threads'
        (schedstat) over the run. Retries a few times while the server is
        not listening yet or still busy with the last test."""
        argv = self.client_prefix + [
            "iperf3", "-c", self.server_addr, "-B", self.client_addr, "-p", str(self.port),
            "-u", "-l", str(length), "-b", rate, "-t", str(seconds), "-J", "--connect-timeout", "3000",
        ]  # fmt: skip
        last = None
        softirqd = ksoftirqd_pids()
        for _ in range(5):
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            server, kernel = cpu_seconds(self.server.pid), sum(cpu_seconds(p) for p in softirqd)
            proc = self.processes.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = proc.communicate(timeout=seconds + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            finally:
                self.processes.stop(proc)
            try:
                result = json.loads(out)
            except json.JSONDecodeError:
                result = {"error": f"no JSON (rc {proc.returncode}): {err.strip()}"}
            if "error" not in result:
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                return result, {
                    "client": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
                    "server": cpu_seconds(self.server.pid) - server,
                    "ksoftirqd": sum(cpu_seconds(p) for p in softirqd) - kernel,
                }
            last = result["error"]
            time.sleep(1.0)
        raise RuntimeError(f"iperf3 on {self.name} failed: {last}")


def rates(result, length):
    """(received packets/s, sent packets/s, received bits/s, sent packets)
    from iperf3 JSON."""
    received, sent = result["end"]["sum_received"], result["end"]["sum_sent"]
    return (
        received["bytes"] / length / received["seconds"],
        sent["packets"] / sent["seconds"],
        received["bits_per_second"],
        sent["packets"],
    )


class Agent:
    def __init__(self, binary, config_text, tmp, processes, tag, watched=("lo", VETH)):
        self.processes = processes
        self.dir = os.path.join(tmp, f"agent-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        config = os.path.join(self.dir, "hostwatch.toml")
        with open(config, "w") as f:
            f.write(config_text.replace("@RECORDINGS@", os.path.join(self.dir, "recordings")))
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "log"), "w+")
        argv = [binary, "run", "--config", config, "--listen", f"127.0.0.1:{self.port}"]
        self.proc = processes.start(argv, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        interfaces = watched
        watched = [
            f'hostwatch_net_burst_threshold_bits_per_second{{interface="{i}",direction="transmit"}}'
            for i in interfaces
        ]
        while True:
            text = self.metrics() or ""
            if 'hostwatch_collector_up{collector="netburst"} 1' in text and all(w in text for w in watched):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the agent did not watch {interfaces}:\n{text[-2000:]}\n{self.log.read()}")
            time.sleep(0.1)

    def metrics(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
            response = conn.getresponse()
            body = response.read().decode()
            conn.close()
            return body if response.status == 200 else None
        except OSError:
            return None

    def values(self, family):
        """{labels: value} of one family in the current scrape."""
        text = self.metrics() or ""
        return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{family}\{{([^}}]*)\}} (\S+)$", text, re.M)}

    def recordings(self):
        path = os.path.join(self.dir, "recordings")
        return len([n for n in os.listdir(path) if n.endswith(".json")]) if os.path.isdir(path) else 0

    def stop(self):
        self.processes.stop(self.proc)
        self.log.close()


def agent_config(binary, threshold=None, include=f"lo|{VETH}", hooks=None):
    """Only netburst: every other collector `hostwatch collectors` lists is disabled."""
    listing = run(binary, "collectors").stdout.splitlines()
    names = [line.split()[0] for line in listing[1:] if line.strip()]
    if "netburst" not in names:
        raise RuntimeError(f"this hostwatch has no netburst collector: {names}")
    disabled = [name for name in names if name != "netburst"]
    sections = [f"[collectors.{name}]\nenabled = false\n" for name in disabled]
    section = f'[collectors.netburst]\ninclude = "{include}"\nrecordings = "@RECORDINGS@"\n'
    if threshold:
        section += f'threshold = "{threshold}"\n'
    if hooks:
        section += f'hooks = "{hooks}"\n'
    sections.append(section)
    return "\n".join(sections), disabled


def spread(values):
    return f"{min(values) / 1e3:.0f}–{max(values) / 1e3:.0f}"


def cv(values):
    """Coefficient of variation in %: how noisy one path and state was."""
    return statistics.pstdev(values) / statistics.mean(values) * 100


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostwatch", default="target/release/hostwatch")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=4, help="length of one packet-rate run")
    parser.add_argument("--load-seconds", type=int, default=20, help="length of the 1 Gbit/s run")
    parser.add_argument("--idle-seconds", type=float, default=20, help="idle time measured, half before and half after the 1 Gbit/s run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin iperf3 clients and servers to CPUs")
    parser.add_argument("--no-bpf-stats", action="store_true", help="do not turn on kernel.bpf_stats_enabled")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait at most for the load to fall below 1.0")
    parser.add_argument("--skip-rate", action="store_true", help="only the CPU phase")
    parser.add_argument("--skip-cpu", action="store_true", help="only the packet-rate phase")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: loads BPF programs, creates a network namespace and a veth pair")
    for tool in ("iperf3", "ip", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    have_bpftool = shutil.which("bpftool") is not None
    bpf_stats_wanted = not args.no_bpf_stats and have_bpftool and os.path.exists(BPF_STATS)
    binary = os.path.abspath(args.hostwatch)
    default_config, disabled = agent_config(binary)
    steady_config, _ = agent_config(binary, "10Gbit")
    unwatched_config, _ = agent_config(binary, include=UNWATCHED)
    tracepoints_config, _ = agent_config(binary, hooks="tracepoints")
    for text in (default_config, steady_config, unwatched_config, tracepoints_config):
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(text.replace("@RECORDINGS@", "/nonexistent"))
            f.flush()
            check = run(binary, "validate", "--config", f.name, check=False)
            if check.returncode != 0:
                sys.exit(f"hostwatch refuses the config:\n{text}\n{check.stdout}{check.stderr}")

    # SIGTERM, SIGHUP and SIGINT end the run through the finally blocks below.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(1))
    net, processes, bpf_stats = Net(), Processes(), BpfStats()
    atexit.register(net.delete)
    atexit.register(processes.stop_all)
    atexit.register(bpf_stats.restore)
    sampler = Sampler()
    sampler.start()

    waited = wait_for_quiet(args.max_wait, have_bpftool)
    rate_rows, cpu_rows, bpf_rows, agent_notes, foreign = {}, [], [], [], []
    iperf_version = run("iperf3", "--version").stdout.splitlines()[0]
    try:
        net.create()
        with tempfile.TemporaryDirectory() as tmp:
            paths = [
                Path("lo", False, "127.0.0.1", False, "127.0.0.1", processes, pin),
                Path("veth out", True, THERE, False, HERE, processes, pin),
                Path("veth in", False, HERE, True, THERE, processes, pin),
            ]
            time.sleep(0.5)
            # Warm-up (not counted): servers up, ARP resolved, caches warm.
            for path in paths:
                path.client(1, "0", DATAGRAM)

            if not args.skip_rate:
                sampler.phase = "rate"
                for round_ in range(args.rounds):
                    shift = round_ % len(STATES)
                    for state in STATES[shift:] + STATES[:shift]:
                        agent = None
                        if state == "with":
                            agent = Agent(binary, default_config, tmp, processes, f"rate{round_}")
                        elif state == "tracepoints":
                            agent = Agent(binary, tracepoints_config, tmp, processes, f"rate{round_}t")
                        elif state == "unwatched":
                            agent = Agent(binary, unwatched_config, tmp, processes, f"rate{round_}u", watched=())
                        if agent:
                            time.sleep(1.0)  # past the first folds
                        if have_bpftool:
                            foreign.append(foreign_netburst(agent.pid if agent else None))
                        for path in paths:
                            cpu_before = cpu_seconds(agent.pid) if agent else 0.0
                            start = time.monotonic()
                            result, cpu = path.client(args.seconds, "0", DATAGRAM)
                            received, sent, _, packets = rates(result, DATAGRAM)
                            agent_cpu = (cpu_seconds(agent.pid) - cpu_before) / (time.monotonic() - start) if agent else None
                            rate_rows.setdefault((path.name, state), []).append(
                                {
                                    "round": round_,
                                    "received": received,
                                    "sent": sent,
                                    "agent": agent_cpu,
                                    # The sender's side: the client and softirq work (charged to the
                                    # task it interrupts, or to ksoftirqd), where every hook runs.
                                    "sender_us": (cpu["client"] + cpu["ksoftirqd"]) / packets * 1e6,
                                }
                            )
                        if agent and state in ("with", "tracepoints"):
                            bursts = agent.values("hostwatch_net_bursts_total")
                            lost = agent.values("hostwatch_net_slots_lost_total")
                            errors = agent.values("hostwatch_collector_errors_total")
                            agent_notes.append((sum(bursts.values()), sum(lost.values()), sum(errors.values())))
                        if agent:
                            agent.stop()
                    print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
                sampler.phase = None

            if not args.skip_cpu:
                sampler.phase = "cpu"
                veth_out = paths[1]
                for label, config in (
                    ("threshold 10 Gbit/s (steady, below it)", steady_config),
                    ("default threshold (1 Gbit/s fallback here: at the rate)", default_config),
                ):
                    agent = Agent(binary, config, tmp, processes, f"cpu{len(cpu_rows)}")
                    if have_bpftool:
                        foreign.append(foreign_netburst(agent.pid))
                    if bpf_stats_wanted:
                        bpf_stats.enable()
                    time.sleep(2.0)  # past start-up and the first folds
                    half = args.idle_seconds / 2

                    def measure(action):
                        bpf0 = bpf_programs(agent.pid) if bpf_stats_wanted else {}
                        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
                        result = action()
                        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
                        bpf1 = bpf_programs(agent.pid) if bpf_stats_wanted else {}
                        return cpu1 - cpu0, t1 - t0, bpf_delta(bpf1, bpf0), result

                    idle = [measure(lambda: time.sleep(half))]
                    bursts_before = sum(agent.values("hostwatch_net_bursts_total").values())
                    veth0 = veth_counters()
                    load = measure(lambda: veth_out.client(args.load_seconds, "1G", STEADY_DATAGRAM)[0])
                    veth1 = veth_counters()
                    bursts = sum(agent.values("hostwatch_net_bursts_total").values()) - bursts_before
                    received, sent, bits, _ = rates(load[3], STEADY_DATAGRAM)
                    idle.append(measure(lambda: time.sleep(half)))
                    lost = sum(agent.values("hostwatch_net_slots_lost_total").values())
                    recordings = agent.recordings()
                    bpf_stats.restore()
                    agent.stop()
                    idle_wall = sum(i[1] for i in idle)
                    cpu_rows.append(
                        {
                            "label": label,
                            "idle": sum(i[0] for i in idle) / idle_wall * 100,
                            "load": load[0] / load[1] * 100,
                            "bits": bits,
                            "veth_bits": (veth1[0] - veth0[0]) * 8 / load[1],
                            "veth_pps": (veth1[1] - veth0[1]) / load[1],
                            "pps": received,
                            "sent_pps": sent,
                            "bursts": bursts,
                            "lost": lost,
                            "recordings": recordings,
                        }
                    )
                    if bpf_stats_wanted:
                        bpf_rows.append(
                            {
                                "label": label,
                                "programs": load[2],
                                "wall": load[1],
                                "sent_pps": sent,
                                "idle_ns": sum(bpf_sum(i[2])[1] for i in idle),
                                "idle_wall": idle_wall,
                            }
                        )
                sampler.phase = None
    finally:
        bpf_stats.restore()
        processes.stop_all()
        net.delete()
        sampler.stopping.set()

    # ---- report ----
    print(f"# {time.strftime('%Y-%m-%d')} on {os.uname().nodename}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print()
    git = run("git", "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    print(
        f"{iperf_version}; hostwatch {os.path.relpath(binary)} at {git or '?'}; "
        f"collectors disabled: {', '.join(disabled)}. "
        + (f"iperf3 clients pinned to CPU {CLIENT_CPU}, servers to CPU {SERVER_CPU}; agent not pinned." if pin else "Nothing pinned.")
    )
    print(
        f"Load before measuring: 1-minute {waited[0]:.2f} at start, {waited[1]:.2f} after waiting {waited[2]:.0f} s "
        f"(at most {args.max_wait:.0f} s)"
        + (" (still not below 1.0)." if waited[1] >= 1.0 else ".")
    )
    if have_bpftool:
        print(
            f"Other netburst BPF programs loaded on the host (not this run's agent; another agent's hooks slow "
            f"every state): present in {sum(1 for n in foreign if n)} of {len(foreign)} blocks, "
            f"at most {max(foreign, default=0)} programs."
        )
    else:
        print("Other netburst BPF programs on the host: not checked (no bpftool).")
    if rate_rows:
        print(f"Packet-rate phase: {sampler.summary('rate')}.")
    if cpu_rows:
        print(f"CPU phase: {sampler.summary('cpu')}.")
    print()

    if rate_rows:
        print(
            f"Packet rate: iperf3 UDP {DATAGRAM}-byte datagrams, unlimited (`-b 0`), {args.seconds} s per run, "
            f"{args.rounds} rounds, each with every state, in rotating order; received datagrams per second at the server."
        )
        print()
        print(
            "| path | state | median received kpps | range kpps | CV of received % | median sent kpps "
            "| sender CPU µs / datagram (median) | agent CPU % of a core (median) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for path in ("lo", "veth out", "veth in"):
            for state in STATES:
                rows = rate_rows[(path, state)]
                received = [r["received"] for r in rows]
                cpu = [r["agent"] * 100 for r in rows if r["agent"] is not None]
                print(
                    f"| {path} | {state} | {statistics.median(received) / 1e3:.1f} | {spread(received)} "
                    f"| {cv(received):.1f} | {statistics.median(r['sent'] for r in rows) / 1e3:.1f} "
                    f"| {statistics.median(r['sender_us'] for r in rows):.2f} "
                    f"| {f'{statistics.median(cpu):.2f}' if cpu else '–'} |"
                )
        print()
        print(
            "| path | against without | received-rate loss, medians (goal ≤ 2 %) | the same, median of per-round ratios "
            "| rounds slower | sent-rate loss, medians | sender CPU per datagram, ratio | and added µs | goal |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for path in ("lo", "veth out", "veth in"):
            without = {r["round"]: r for r in rate_rows[(path, "without")]}

            def median(rows, key):
                return statistics.median(r[key] for r in rows.values())

            for state in STATES[1:]:
                other = {r["round"]: r for r in rate_rows[(path, state)]}
                loss = (1 - median(other, "received") / median(without, "received")) * 100
                ratios = [other[k]["received"] / without[k]["received"] for k in without if k in other]
                paired = (1 - statistics.median(ratios)) * 100
                slower = sum(1 for r in ratios if r < 1)
                sent_loss = (1 - median(other, "sent") / median(without, "sent")) * 100
                cost = median(other, "sender_us") / median(without, "sender_us")
                added = median(other, "sender_us") - median(without, "sender_us")
                goal = ("met" if loss <= 2 else "not met") if state == "with" else ""
                print(
                    f"| {path} | {state} | {loss:+.1f} % | {paired:+.1f} % | {slower} of {len(ratios)} "
                    f"| {sent_loss:+.1f} % | {cost:.3f} | {added:+.2f} | {goal} |"
                )
        print()
        bursts = sum(n[0] for n in agent_notes)
        lost = sum(n[1] for n in agent_notes)
        errors = sum(n[2] for n in agent_notes)
        print(
            f"Agents during the packet-rate phase: {bursts:g} bursts, {lost:g} lost milliseconds, "
            f"{errors:g} collector errors in all (loss: positive means slower with the detector)."
        )
        print()

    if cpu_rows:
        print(
            f"Agent CPU: iperf3 UDP `-b 1G -l {STEADY_DATAGRAM}` from {HERE} across the veth to {THERE}, "
            f"{args.load_seconds} s; idle: {args.idle_seconds:g} s without traffic (half before, half after)."
        )
        print()
        print(
            "| agent | idle, % of one core | at 1 Gbit/s, % of one core (goal < 1 %) | Mbit/s on the veth "
            "| kpps on the veth | Mbit/s received | bursts | lost ms | recordings | goal |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in cpu_rows:
            print(
                f"| {r['label']} | {r['idle']:.3f} | {r['load']:.3f} | {r['veth_bits'] / 1e6:.0f} | {r['veth_pps'] / 1e3:.1f} "
                f"| {r['bits'] / 1e6:.0f} | {r['bursts']:g} | {r['lost']:g} | {r['recordings']} "
                f"| {'met' if r['load'] < 1 else 'not met'} |"
            )
        print()
        print(
            "Mbit/s on the veth: transmitted by the watched end (its tx_bytes, with UDP, IP and Ethernet headers), "
            "what the detector counts; received: what iperf3's server read (payload)."
        )
        short = [r["label"] for r in cpu_rows if r["veth_bits"] < 0.95e9]
        if short:
            print()
            print(f"WARNING: the veth carried less than 950 Mbit/s ({'; '.join(short)}): the machine was too busy.")
        print()
    if bpf_rows:
        print(
            "BPF programs, in the kernel on the CPUs that send and receive (kernel.bpf_stats_enabled during "
            "this phase only; the stats add their own clock reads to each run):"
        )
        print()
        print("| agent | program | runs / s at 1 Gbit/s | ns / run | runs per datagram sent | % of one core at 1 Gbit/s | % of one core idle |")
        print("|---|---|---|---|---|---|---|")
        for r in bpf_rows:
            rows = sorted(r["programs"].items()) + [("all", bpf_sum(r["programs"]))]
            for name, (runs, ns) in rows:
                per_run = ns / runs if runs else float("nan")
                idle = f"{r['idle_ns'] / 1e9 / r['idle_wall'] * 100:.3f}" if name == "all" else ""
                print(
                    f"| {r['label']} | {name} | {runs / r['wall']:.0f} | {per_run:.0f} "
                    f"| {runs / r['wall'] / r['sent_pps']:.2f} | {ns / 1e9 / r['wall'] * 100:.2f} | {idle} |"
                )
        print()


if __name__ == "__main__":
    sys.exit(main())
