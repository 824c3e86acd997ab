"""The answer check's first request: sent to the live tree at checkpoint, its answer recorded.

It goes out before the pre-checkpoint hook and before anything is frozen (a hook may put
the server to sleep; a frozen server answers nothing), from the tree's network namespace
(host/probes.py). No answer, or one whose status is not 2xx, refuses the checkpoint with
CheckpointAnswerFailed while nothing has been touched: a snapshot that could never be
verified is not taken.
"""

from __future__ import annotations

import dataclasses

import structlog

from snapd_daemon.errors import CheckpointAnswerFailed
from snapd_daemon.host.probes import AnswerCheck, ProbeFailed

log = structlog.get_logger()


def record(check: AnswerCheck, pid: int, operation_id: str) -> AnswerCheck:
    """``check`` with the status and digest of the answer ``pid``'s tree gives it now."""
    try:
        status, digest = check.ask(pid, check.timeout)
    except ProbeFailed as exc:
        raise CheckpointAnswerFailed(pid=pid, url=check.url, reason=f"got no answer: {exc}") from None
    if not 200 <= status < 300:
        raise CheckpointAnswerFailed(pid=pid, url=check.url, reason=f"answered status {status}, not 2xx")
    if digest.startswith("no-field:"):
        raise CheckpointAnswerFailed(pid=pid, url=check.url,
                                     reason=f"answered no JSON object with the field {check.json_field!r}")
    log.info("checkpoint.answer_recorded", op=operation_id, url=check.url, status=status, digest=digest)
    return dataclasses.replace(check, status=status, digest=digest)
