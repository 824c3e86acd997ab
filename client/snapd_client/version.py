"""The installed version, and `snapd --version` answered before anything heavy is imported.

Both entry points (the daemon's `snapd`, the client's `python -m snapd_client`) call
``answer_version`` first: importing gRPC, protobuf and the daemon's modules takes most of a
second, and `--version` needs none of them. This module imports only the standard library.
"""

from __future__ import annotations

import importlib.metadata
import sys

# the daemon's distribution when it is installed, else the client-only one
DISTRIBUTIONS = ("gpu-snapd", "gpu-snapd-client")
VERSION_FLAGS = (["--version"], ["-V"])


def version() -> str:
    for name in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown (not installed)"


def answer_version(argv: list[str] | None = None) -> bool:
    """Print "snapd VERSION" and return True when the command line is only --version (or -V)."""
    if (sys.argv[1:] if argv is None else argv) not in VERSION_FLAGS:
        return False
    print(f"snapd {version()}")
    return True
