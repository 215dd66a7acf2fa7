"""CPU-bound Python threads contending for the GIL, for hostwatch's GIL tests.

Usage: gil_threads.py THREADS SECONDS [TAG] [--sleeper]

Starts THREADS threads that run pure-Python arithmetic for SECONDS, prints
"ready" once all of them run, and at the end one JSON line: the wall time and
each thread's CPU time (time.thread_time), from which the test checks that the
GIL was shared evenly. With --sleeper one more thread sleeps 1 ms at a time,
so it takes the GIL back after every sleep (what fallback mode can see). TAG
is ignored: it marks the command line so that a test's agent selects only its
own processes.
"""

import json
import sys
import threading
import time


def spin(deadline, cpu, index):
    x = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            x += 1
    cpu[index] = time.thread_time()


def sleep(deadline):
    while time.monotonic() < deadline:
        time.sleep(0.001)


def main():
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.monotonic() + seconds
    cpu = [0.0] * threads
    workers = [threading.Thread(target=spin, args=(deadline, cpu, i)) for i in range(threads)]
    if "--sleeper" in sys.argv:
        workers.append(threading.Thread(target=sleep, args=(deadline,)))
    start = time.monotonic()
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    for worker in workers:
        worker.join()
    print(json.dumps({"wall": time.monotonic() - start, "cpu": cpu}), flush=True)


main()
