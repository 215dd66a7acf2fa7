#!/usr/bin/env python3
"""What a monitoring agent does to a training rank (DESIGN.md: Ray's
reporter): psutil's memory_full_info(), which reads /proc/PID/smaps, in a
loop, until killed.

usage: smaps_reader.py PID [PAUSE_SECONDS]
"""
import sys
import time

import psutil

with open("/proc/self/comm", "w") as comm:
    comm.write("smaps_reader")

target = psutil.Process(int(sys.argv[1]))
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
while True:
    target.memory_full_info()
    if pause:
        time.sleep(pause)
