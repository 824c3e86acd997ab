"""The CRIU logs of failed operations, kept after their staging is gone.

CRIU writes its log into the operation's staging directory, which is removed
when the operation ends. When CRIU fails, ``kept`` copies that log to
``<state_dir>/criu-logs/<operation>-<action>.log`` and re-raises the
CriuFailed naming the copy. Only the newest ``KEEP`` logs stay; a log that
cannot be copied leaves the error as it was (and a warning in the daemon log).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from snapd_daemon.errors import CriuFailed

log = structlog.get_logger()
KEEP = 20


@contextmanager
def kept(log_dir: Path, operation_id: str) -> Iterator[None]:
    """Around a CRIU call: a CriuFailed leaving it names a kept copy of its log."""
    try:
        yield
    except CriuFailed as err:
        raise _keep(log_dir, operation_id, err) from err


def _keep(log_dir: Path, operation_id: str, err: CriuFailed) -> CriuFailed:
    copy = log_dir / f"{operation_id}-{err.fields['action']}.log"
    try:
        log_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(err.fields["log"], copy)
        for old in sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        copy.unlink(missing_ok=True)  # a full disk: no partial copy stays
        log.warning("criu.log_not_kept", log=str(err.fields["log"]), error=str(exc))
        return err
    return CriuFailed(**{**err.fields, "log": copy})
