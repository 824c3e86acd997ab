"""Failures about instances (restored trees the daemon keeps) and their events."""

from __future__ import annotations

from snapd_daemon.errors.base import SnapdError


class InstanceNotFound(SnapdError):
    """instance {instance!r} not found (neither an id nor the start of one); `snapd ps -a` lists the instances the daemon keeps."""

    exit_code = 70
    status = "NOT_FOUND"


class InstanceAmbiguous(SnapdError):
    """{ref!r} starts {count} instance ids: {candidates}; give more of the id."""

    exit_code = 71
    status = "INVALID_ARGUMENT"


class SnapshotHasInstances(SnapdError):
    """snapshot {snapshot_id} has {count} running instance(s): {instances}; stop them first (`snapd stop ID`), or delete it anyway with --force (they keep running)."""

    exit_code = 72
    status = "FAILED_PRECONDITION"


class InstanceStopFailed(SnapdError):
    """instance {instance} did not stop: {reason}"""

    exit_code = 73
    status = "INTERNAL"


class InstanceStarting(SnapdError):
    """instance {instance} is still starting (its restore, operation {operation_id}, runs); wait for it, or cancel it with `snapd cancel {operation_id}`."""

    exit_code = 75
    status = "FAILED_PRECONDITION"


class EventsExpired(SnapdError):
    """cannot resume events after sequence {after}: {reason}. List the instances (`snapd ps -a`) for the current state, then watch from 0 (new events only)."""

    exit_code = 74
    status = "OUT_OF_RANGE"


class WatchersBusy(SnapdError):
    """{limit} event streams (WatchEvents) are open, the most this daemon serves at once: each holds one of its RPC threads while open, and the others stay for checkpoints, restores and queries. Close a stream nobody reads, or watch from one client and fan the events out."""

    exit_code = 76
    status = "RESOURCE_EXHAUSTED"


class ReadyTimeout(SnapdError):
    """instance {instance} of snapshot {snapshot_id} was not ready: {probe} did not pass {why} (timeout {timeout} s; last result: {last}); the restore failed and its tree was killed."""

    exit_code = 37
    status = "DEADLINE_EXCEEDED"


class VerifyMismatch(SnapdError):
    """instance {instance} of snapshot {snapshot_id} answered {url} differently than at checkpoint: status {status}, digest {digest}; recorded status {expected_status}, digest {expected_digest}. The restore failed and its tree was killed."""

    exit_code = 38
    status = "ABORTED"


class CheckpointAnswerFailed(SnapdError):
    """the answer check of pid {pid} failed: {url} {reason}; nothing was checkpointed and the tree runs untouched (is the server up and its URL as the tree sees it, in its own network namespace?)."""

    exit_code = 39
    status = "FAILED_PRECONDITION"
