#!/usr/bin/env python3
"""Opens COUNT idle TCP connections to a loopback proxy, says "holding" on
stdout, holds them for HOLD seconds, then reports as JSON how many were
answered 503 (the proxy's limit), how many are still open and silent, and
how many failed. Bounded: it closes everything and exits after HOLD.

Only for loopback addresses.
"""

import argparse
import json
import resource
import select
import socket
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=3.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sockets, failed = [], 0
    for _ in range(args.count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", args.port), timeout=5))
        except OSError:
            failed += 1
    print("holding", flush=True)
    time.sleep(args.hold)

    refused = silent = closed = 0
    poller = select.poll()
    by_fd = {}
    for sock in sockets:
        poller.register(sock, select.POLLIN)
        by_fd[sock.fileno()] = sock
    ready = {fd for fd, _ in poller.poll(0)}
    for fd, sock in by_fd.items():
        if fd not in ready:
            silent += 1
            continue
        try:
            data = sock.recv(64)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 503"):
            refused += 1
        else:
            closed += 1
    for sock in sockets:
        sock.close()
    json.dump({"opened": len(sockets), "failed": failed, "refused_503": refused, "silent": silent, "closed": closed}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
