"""Failures of the remote tier (an S3 bucket)."""

from __future__ import annotations

from snapd_daemon.errors.base import SnapdError


class RemoteUnreachable(SnapdError):
    """remote store {endpoint} (bucket {bucket}) unreachable while {action} {key}: {reason}. Check the endpoint, the network and that the server runs; snapd retried {retries} time(s) with backoff."""

    exit_code = 52
    status = "UNAVAILABLE"


class RemoteDenied(SnapdError):
    """remote store {endpoint} denied {action} {key} in bucket {bucket}: {reason}. Check the credentials (remote_credentials_file, AWS_* environment, profile) and the bucket's policy."""

    exit_code = 53
    status = "PERMISSION_DENIED"


class RemoteObjectBad(SnapdError):
    """remote object {key} in bucket {bucket} is {problem}; nothing was published from it. `snapd push` the snapshot again from a host that holds it intact."""

    exit_code = 54
    status = "DATA_LOSS"


class RemoteMissing(SnapdError):
    """remote store {endpoint} bucket {bucket}: {what} is not there (object {key}){hint}"""

    exit_code = 55
    status = "NOT_FOUND"


class RemoteBusy(SnapdError):
    """remote store {endpoint} bucket {bucket}: {reason}; retry when it has ended."""

    exit_code = 56
    status = "ABORTED"


class RemoteNotConfigured(SnapdError):
    """no remote store is configured for this daemon; set remote_endpoint and remote_bucket in its config.toml (see `snapd serve --help`)."""

    exit_code = 57
    status = "FAILED_PRECONDITION"


class RemoteFailed(SnapdError):
    """remote store {endpoint} bucket {bucket}: {action} {key} failed: {reason}"""

    exit_code = 58
    status = "UNAVAILABLE"


class RemoteUndecryptable(SnapdError):
    """remote object {key} in bucket {bucket} ({sealing}) was refused: {reason}; nothing was published from it."""

    exit_code = 35
    status = "DATA_LOSS"


class RemoteKeyMissing(SnapdError):
    """remote object {key} in bucket {bucket} is encrypted with key id {key_id}, which this host does not hold (it holds {held}); add that key's file to remote_read_key in config.toml (or make it remote_encryption_key) and restart the daemon; nothing was published from it."""

    exit_code = 36
    status = "FAILED_PRECONDITION"
