"""Typed Python client and CLI for the snapd daemon."""

from snapd_client.client import DEFAULT_TARGET, CgroupSpec, SnapdClient, SnapdClientError, TlsFiles

__all__ = ["DEFAULT_TARGET", "CgroupSpec", "SnapdClient", "SnapdClientError", "TlsFiles"]
