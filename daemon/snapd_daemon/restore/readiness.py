"""A restored tree's readiness: its snapshot's probe waited for, its answer verified, or the
probe left to the daemon in the background (docs/readiness.md).

Every probe and check goes out from the restored root's network namespace
(host/probes.py), so the URL recorded at checkpoint is valid as written wherever the
tree's ports are published. A restore that waits (the default when the snapshot has a
probe) tries the probe every ``INTERVAL`` until it passes or its timeout ends
(ReadyTimeout); with ``verify`` it then sends the recorded request again and compares
status and digest (VerifyMismatch; ReadyTimeout when no answer comes in time). Both run
before the restore's undo is dropped, so a failure kills the tree: all or nothing.
A restore that does not wait returns at ``running``; a daemon thread then probes until
the instance is ``ready``, or says in its ``detail`` that it never was. A daemon that
restarts meanwhile probes such an instance again (``resume``), for the probe's whole
timeout, its ``ready_seconds`` then counted from the instance's creation.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable

import structlog

from snapd_daemon.errors import InvalidRequest, ReadyTimeout, VerifyMismatch
from snapd_daemon.host.probes import AnswerCheck, ProbeFailed, ReadyProbe
from snapd_daemon.runtime.instances import LIVE, InstanceTable, State
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()
INTERVAL = 0.1  # seconds between two tries of a probe
IN_TIME, ROOT_ENDED = "within its timeout", "before the tree's root ended"


def wait_for(probe: ReadyProbe, pid: int, alive: Callable[[], bool]) -> str:
    """Try ``probe`` from ``pid``'s namespace until it passes (""), its timeout ends or the tree
    is gone (``alive``); then its last result."""
    deadline = time.monotonic() + probe.timeout
    last = "not tried"
    while alive() and (left := deadline - time.monotonic()) > 0:
        last = probe.attempt(pid, left)
        if not last:
            return ""
        time.sleep(min(INTERVAL, max(0.0, deadline - time.monotonic())))
    return last


class Readiness:
    """One restore's readiness, from its snapshot and request: checked before anything is made."""

    def __init__(self, manifest: Manifest, wait: bool | None, verify: bool, started: float) -> None:
        self.manifest = manifest
        self.probe = manifest.ready_probe
        self.verify = verify
        self.started = started  # the restore's start (time.monotonic())
        self.waits = self.probe is not None and wait is not False
        self.verified = ""
        self._ready_seconds: float | None = None
        if verify and manifest.answer_check is None:
            raise InvalidRequest(field="verify", reason=f"snapshot {manifest.id} recorded no answer check; take it "
                                 "with --verify-http URL --verify-body BODY to verify its restores")
        if verify and wait is False:
            raise InvalidRequest(field="verify", reason="an answer is verified once the tree is ready: it cannot "
                                 "go with --no-wait-ready")

    @property
    def probed(self) -> bool:
        return self.probe is not None

    def ready_seconds(self, restored: float) -> float | None:
        """Seconds from the restore's start to ready, the restore having taken ``restored``:
        when its probe passed, or ``restored`` without a probe; None while a probe runs on."""
        if self.probe is None:
            return restored
        return self._ready_seconds

    def settle(self, pid: int, instances: InstanceTable, instance_id: str, report: Reporter) -> None:
        """Wait for the probe (when this restore waits), then verify (when asked); ReadyTimeout
        (no pass or answer in time, or the tree ended meanwhile) or VerifyMismatch otherwise."""
        m = self.manifest

        def alive() -> bool:
            return instances.state_of(instance_id) in LIVE

        if self.waits and self.probe is not None:
            report(ProgressEvent(Phase.WAIT_READY, message=self.probe.describe()))
            last = wait_for(self.probe, pid, alive)
            if last:
                raise ReadyTimeout(instance=instance_id, snapshot_id=m.id, probe=self.probe.describe(),
                                   why=IN_TIME if alive() else ROOT_ENDED, timeout=self.probe.timeout, last=last)
            self._ready_seconds = round(time.monotonic() - self.started, 3)
            log.info("restore.ready", instance=instance_id, seconds=self._ready_seconds)
        if self.verify and m.answer_check is not None:
            report(ProgressEvent(Phase.VERIFY, message=m.answer_check.describe()))
            self.verified = self._verify(m.answer_check, pid, instance_id, alive)
            log.info("restore.verified", instance=instance_id, digest=self.verified)

    def _verify(self, check: AnswerCheck, pid: int, instance_id: str, alive: Callable[[], bool]) -> str:
        """The recorded request again: its digest when the answer is the recorded one."""
        deadline = time.monotonic() + check.timeout
        last = "not tried"
        while alive() and (left := deadline - time.monotonic()) > 0:
            try:
                status, digest = check.ask(pid, left)
            except ProbeFailed as exc:
                last = str(exc)
                time.sleep(min(INTERVAL, max(0.0, deadline - time.monotonic())))
                continue
            if (status, digest) != (check.status, check.digest):
                raise VerifyMismatch(instance=instance_id, snapshot_id=self.manifest.id, url=check.url, status=status,
                                     digest=digest, expected_status=check.status, expected_digest=check.digest)
            return digest
        raise ReadyTimeout(instance=instance_id, snapshot_id=self.manifest.id, probe=f"the answer check (POST "
                           f"{check.url})", why=IN_TIME if alive() else ROOT_ENDED, timeout=check.timeout, last=last)

    def follow(self, instances: InstanceTable, pid: int, instance_id: str) -> None:
        """A restore that returned at running: probe in the background until it is ready."""
        if self.probe is not None and not self.waits:
            _follow(instances, self.probe, pid, instance_id, lambda: time.monotonic() - self.started)


def resume(instances: InstanceTable, manifest_of: Callable[[str], Manifest | None]) -> None:
    """At a daemon's start, after ``instances.load``: probe again, in the background, each
    re-adopted instance still ``running`` whose snapshot (``manifest_of`` its id; None: gone)
    has a probe and that no probe has said was never ready."""
    for inst in instances.list():
        m = manifest_of(inst.snapshot_id) if inst.state is State.RUNNING and not inst.detail else None
        if m is not None and m.ready_probe is not None:
            log.info("instance.probing_again", instance=inst.id, probe=m.ready_probe.describe())
            _follow(instances, m.ready_probe, inst.root_pid, inst.id, lambda created=inst.created: time.time() - created)


def _follow(instances: InstanceTable, probe: ReadyProbe, pid: int, instance_id: str,
            seconds: Callable[[], float]) -> None:
    """Probe in a daemon thread until the instance is ready (``seconds()`` then: its ready_seconds),
    or its detail says it never was."""

    def run() -> None:
        def running() -> bool:
            return instances.state_of(instance_id) is State.RUNNING

        last = wait_for(probe, pid, running)
        if not last and instances.ready(instance_id, seconds()):
            log.info("instance.ready", instance=instance_id, seconds=round(seconds(), 3))
        elif last and running():
            instances.not_ready(instance_id, f"its readiness probe ({probe.describe()}) did not pass within "
                                f"{probe.timeout} s (last result: {last}); it runs, never ready")

    threading.Thread(target=contextvars.copy_context().run, args=(run,), name=f"ready-{instance_id}",
                     daemon=True).start()
