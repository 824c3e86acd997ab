"""Keep PATH open read-write (as a database does) and tick.

usage: rwfile.py PATH REPORT
report: "<pid>" once running
"""

import os
import sys
import time

from _report import write_report

f = open(sys.argv[1], "r+b")
write_report(sys.argv[2], str(os.getpid()))
while True:
    time.sleep(0.05)
