"""Restore: a snapshot back into a live process tree (run; asked and answered in
spec), the trimmed images handed to CRIU (images), reading each chunk once into
files or process memory (delivery), the snapshot's pids (pids), the sandbox a tree
goes into (into) and its readiness (readiness).

Imports the remote tier (a snapshot only it holds is pulled while restored),
the runtime, snapshots, the store, CRIU and host adapters; must never import
checkpoint, the API or the server.
"""

from snapd_daemon.restore.run import restore
from snapd_daemon.restore.spec import RestoreOutcome, RestoreSpec

__all__ = ["RestoreOutcome", "RestoreSpec", "restore"]
