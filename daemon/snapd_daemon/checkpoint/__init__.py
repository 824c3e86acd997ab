"""Checkpoint: a live process tree into a durable snapshot (run), the CRIU-aware
cut of its images into chunks (cutplan), storing them while CRIU still
writes (follower), and the answer check recorded from the live tree (answer).

Imports the runtime, snapshots, the store, CRIU and host adapters; must never
import restore, the API or the server.
"""

from snapd_daemon.checkpoint.run import CheckpointSpec, checkpoint

__all__ = ["CheckpointSpec", "checkpoint"]
