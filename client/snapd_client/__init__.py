"""Typed Python client and CLI for the snapd daemon."""

from snapd_client.client import DEFAULT_TARGET, SnapdClient, SnapdClientError

__all__ = ["DEFAULT_TARGET", "SnapdClient", "SnapdClientError"]
