"""What every long operation's run object holds (``CheckpointRun``, ``RestoreRun``)."""

from __future__ import annotations

import time

from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.progress import Reporter
from snapd_daemon.runtime.settings import Runtime


class OperationRun:
    """The runtime, the operation's id, where its progress goes, its cancel token and
    when it started; subclasses add one method per phase of the operation."""

    def __init__(self, rt: Runtime, operation_id: str, report: Reporter, cancel: CancelToken) -> None:
        self.rt = rt
        self.op = operation_id
        self.report = report
        self.cancel = cancel
        self.started = time.monotonic()
