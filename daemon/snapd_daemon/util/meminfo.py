"""What the kernel says about memory."""

from __future__ import annotations


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 if the kernel does not say)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
