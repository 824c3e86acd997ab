"""A parent holding SIZE_MB of random bytes and a child it started (threads.py, counting in
N threads): a tree whose root CRIU registers with its userfaultfd only once the child has
restored its threads. The parent reports "<pid> <sha256 of its region> <checks>" to REPORT,
the child "<pid> <threads alive> <counter> ..." to REPORT.child, each on SIGUSR1. The child
is executed afresh, so it shares no memory with the parent.

usage: treethreads.py SIZE_MB N REPORT
"""

import os
import subprocess
import sys
from pathlib import Path

from _report import guarded_region, hold_digest

size, n, report = int(sys.argv[1]) << 20, sys.argv[2], sys.argv[3]
subprocess.Popen([sys.executable, str(Path(__file__).with_name("threads.py")), n, report + ".child"],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
region = guarded_region(size)
region[:] = os.urandom(size)
hold_digest(report, lambda: region)
