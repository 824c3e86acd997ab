"""What operations share: settings, the Runtime built at start, the registry of
operations in flight, the hold journal, progress events, staging directories,
and the host diagnosis.

Imports the store, snapshots, CRIU and host adapters; must never import the
operations themselves (checkpoint, restore), the API or the server.
"""

from snapd_daemon.runtime.settings import Runtime, Settings

__all__ = ["Runtime", "Settings"]
