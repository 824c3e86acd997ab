"""The remote tier's operations: push a snapshot to an S3 bucket (push), pull one from it,
whole (pull) or on demand under a restore (ondemand, fed by fetch), list the bucket's
snapshots (listing) and collect its garbage (gc).

Invariants: a snapshot is never half-visible on either side. Remotely its manifest is
uploaded last, after every chunk it names is in the bucket, and only while this host's
push lock is fresh (so no gc removed a chunk the push found there); locally a pulled
snapshot's chunks are staged and published with its manifest only once all of them
arrived and were verified. Every chunk and manifest is sealed before it leaves the
host and opened (authenticated) before anything read back is used (store/envelope.py).

Imports the runtime, snapshots and the store; must never import checkpoint, restore,
the API or the server (restore and the API use this package).
"""

from snapd_daemon.remote.gc import RemoteGcReport, collect_garbage
from snapd_daemon.remote.listing import remote_snapshots, require_remote
from snapd_daemon.remote.pull import PullOutcome, pull
from snapd_daemon.remote.push import PushOutcome, background_push, push

__all__ = ["PullOutcome", "PushOutcome", "RemoteGcReport", "background_push", "collect_garbage", "pull", "push",
           "remote_snapshots", "require_remote"]
