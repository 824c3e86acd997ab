"""Typed Python client and CLI for the snapd daemon.

The names below are loaded on first use (PEP 562), so that importing a submodule that needs
no gRPC (snapd_client.version, for a fast `snapd --version`) does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapd_client.client import (
        DEFAULT_TARGET,
        CgroupSpec,
        Phase,
        SnapdClient,
        SnapdClientError,
        TcpRestore,
        TlsFiles,
        phase_name,
    )

__all__ = ["DEFAULT_TARGET", "CgroupSpec", "Phase", "SnapdClient", "SnapdClientError", "TcpRestore", "TlsFiles",
           "phase_name"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'snapd_client' has no attribute {name!r}")
    from snapd_client import client

    return getattr(client, name)
