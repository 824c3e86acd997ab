"""Typed Python client and CLI for the snapd daemon."""

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

__all__ = ["DEFAULT_TARGET", "CgroupSpec", "InstanceState", "Phase", "SnapdClient", "SnapdClientError", "TcpRestore",
           "TlsFiles", "phase_name", "state_name"]
