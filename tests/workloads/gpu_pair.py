"""One process, CUDA contexts on two GPUs (a model split across GPUs, as device_map does):
a tensor on cuda:0, one on cuda:1, and activations copied from one to the other.

usage: gpu_pair.py REPORT      report: "<pid> <sum on 0> <sum on 1> <sum across>", again on SIGUSR1
"""

import os
import sys
import time

import torch
from _report import on_usr1, write_report

first = torch.arange(1 << 22, device="cuda:0", dtype=torch.float64) * 3 + 1
second = torch.arange(1 << 22, device="cuda:1", dtype=torch.float64) * 5 + 2
asked = [True]
on_usr1(lambda: asked.__setitem__(0, True))
while True:
    if asked[0]:
        asked[0] = False
        on0 = float((first * 2).sum())
        on1 = float((second * 2).sum())
        across = float((first.to("cuda:1") + second).sum())  # a device-to-device copy, as between layers
        write_report(sys.argv[1], f"{os.getpid()} {on0!r} {on1!r} {across!r}")
    time.sleep(0.05)
