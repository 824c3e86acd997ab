"""Map PATH privately, read its first 64 pages, write 16 pages at 4 MiB, and idle.

usage: mapfile.py PATH REPORT
report: "<pid>" once the pages are touched
"""

import mmap
import os
import sys
import time

from _report import write_report

PAGE = mmap.PAGESIZE
with open(sys.argv[1], "rb") as f:
    mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
read = sum(mapping[i * PAGE] for i in range(64))
for i in range(16):
    mapping[(4 << 20) + i * PAGE] = read & 0xFF
write_report(sys.argv[2], str(os.getpid()))
while True:
    time.sleep(0.05)
