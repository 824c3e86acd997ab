"""Under `snapd run`: on SIGUSR1 tell a unix socket what /proc says about this process, as one JSON line.

usage: procself.py SOCKET PORT REPORT     PORT is ignored; report: "<pid>"
The condition libcuda needs in a pid namespace: /proc/<os.getpid()> and /proc/self are this
process (its pid inside, its own comm), i.e. /proc belongs to the tree's pid namespace. The
report holds: pid, times asked, /proc/<pid>/status's Pid, NSpid and Name, /proc/self's target,
/proc/1's command line ("|" between arguments) and the pids /proc lists. The comm is set to "procself" at start; after each report, "asked N" goes to stdout.
"""

import ctypes
import json
import os
import sys
import time

from _report import on_usr1, tell, write_report

PR_SET_NAME = 15
ctypes.CDLL(None).prctl(PR_SET_NAME, b"procself", 0, 0, 0)
asked = 0
wanted = False


def usr1() -> None:
    global wanted
    wanted = True


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def report() -> str:
    me = os.getpid()
    seen = status(me)
    with open("/proc/1/cmdline", "rb") as f:
        init = f.read().rstrip(b"\0").replace(b"\0", b"|").decode()
    return json.dumps({"pid": me, "asked": asked, "status_pid": int(seen["Pid"]),
                       "nspid": [int(x) for x in seen["NSpid"].split()], "name": seen["Name"],
                       "self": os.readlink("/proc/self"), "init": init,
                       "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}, separators=(",", ":"))


on_usr1(usr1)
write_report(sys.argv[3], f"{os.getpid()}")
while True:
    if wanted:
        wanted = False
        asked += 1
        tell(sys.argv[1], report())
        print(f"asked {asked}", flush=True)
    time.sleep(0.05)
