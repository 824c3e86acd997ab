"""Typed Python client (sync and asyncio) and CLI for the snapd daemon."""

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

__all__ = ["DEFAULT", "DEFAULT_TARGET", "OPERATION", "QUERY", "STORE", "AsyncSnapdClient", "CgroupSpec",
           "InstanceState", "Phase", "SnapdClient", "SnapdClientError", "TcpRestore", "TlsFiles", "errors", "phase_name",
           "state_name"]
