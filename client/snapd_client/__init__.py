"""Typed Python client (sync and asyncio) and CLI for the snapd daemon.

The names below are loaded on first use (PEP 562), so that importing a submodule that needs
no gRPC (snapd_client.version, for a fast `snapd --version`) does not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapd_client import errors
    from snapd_client.aio import AsyncSnapdClient
    from snapd_client.calls import DEFAULT, OPERATION, QUERY, STORE
    from snapd_client.client import (
        DEFAULT_TARGET,
        CgroupSpec,
        InstanceState,
        Phase,
        SnapdClient,
        SnapdClientError,
        TcpRestore,
        TlsFiles,
        phase_name,
        state_name,
    )

# each public name and the submodule it comes from
_HOMES = {
    "AsyncSnapdClient": "aio",
    **dict.fromkeys(("DEFAULT", "OPERATION", "QUERY", "STORE"), "calls"),
    **dict.fromkeys(("DEFAULT_TARGET", "CgroupSpec", "InstanceState", "Phase", "SnapdClient", "SnapdClientError",
                     "TcpRestore", "TlsFiles", "phase_name", "state_name"), "client"),
}
__all__ = ["DEFAULT", "DEFAULT_TARGET", "OPERATION", "QUERY", "STORE", "AsyncSnapdClient", "CgroupSpec",
           "InstanceState", "Phase", "SnapdClient", "SnapdClientError", "TcpRestore", "TlsFiles", "errors", "phase_name",
           "state_name"]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("snapd_client.errors")
    if name not in _HOMES:
        raise AttributeError(f"module 'snapd_client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"snapd_client.{_HOMES[name]}"), name)
