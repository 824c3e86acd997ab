"""Checkpoint: a live process tree into a durable snapshot (run), the CRIU-aware
cut of its images into chunks (cutplan), and storing them while CRIU still
writes (follower).

Imports the runtime, snapshots, the store, CRIU and host adapters; must never
import restore, the API or the server.
"""

from snapd_daemon.checkpoint.run import CheckpointSpec, checkpoint

__all__ = ["CheckpointSpec", "checkpoint"]
