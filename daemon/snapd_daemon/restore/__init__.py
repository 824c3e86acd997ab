"""Restore: a snapshot back into a live process tree (run), the trimmed images
handed to CRIU (images), reading each chunk once into files or process memory
(delivery), and the snapshot's pids (pids).

Imports the remote tier (a snapshot only it holds is pulled while restored),
the runtime, snapshots, the store, CRIU and host adapters; must never import
checkpoint, the API or the server.
"""

from snapd_daemon.restore.run import RestoreOutcome, RestoreSpec, restore

__all__ = ["RestoreOutcome", "RestoreSpec", "restore"]
