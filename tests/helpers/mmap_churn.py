#!/usr/bin/env python3
"""A victim for the smaps storm tests: holds many VMAs with their pages
touched (so reading its smaps walks many page tables under its mmap_lock) and
churns mmap/munmap (each needs the mmap_lock for writing) until killed.

usage: mmap_churn.py [VMAS]   prints "ready" once the VMAs exist
"""
import mmap
import sys

# A comm of its own, so tests tell it from other Pythons in labels.
with open("/proc/self/comm", "w") as comm:
    comm.write("mmap_churn")

PAGE = mmap.PAGESIZE
vmas = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
held = []
for _ in range(vmas):
    # Python's anonymous maps are MAP_SHARED: each is its own shmem file, so
    # neighbours never merge into one VMA.
    m = mmap.mmap(-1, 4 * PAGE)
    for page in range(4):
        m[page * PAGE] = 1
    held.append(m)
print("ready", flush=True)
while True:
    m = mmap.mmap(-1, PAGE)
    m[0] = 1
    m.close()
