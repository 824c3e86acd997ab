"""Progress reporting: what reaches the stream when workers report per chunk."""

from __future__ import annotations

import time

from snapd_daemon.runtime.progress import Phase, ProgressEvent, Throttle


def test_throttle_keeps_phase_starts_messages_and_completions() -> None:
    sent: list[ProgressEvent] = []
    report = Throttle(sent.append, interval=0.2)
    report(ProgressEvent(Phase.INJECT, 0, 100))  # first of its phase
    for done in range(1, 50):
        report(ProgressEvent(Phase.INJECT, done, 100))  # dropped: within the interval
    report(ProgressEvent(Phase.INJECT, 60, 100, "a message"))
    report(ProgressEvent(Phase.INJECT, 100, 100))  # completes the phase
    report(ProgressEvent(Phase.GPU_RESTORE))  # a new phase
    assert [(e.phase, e.bytes_done) for e in sent] == [
        (Phase.INJECT, 0), (Phase.INJECT, 60), (Phase.INJECT, 100), (Phase.GPU_RESTORE, 0),
    ]


def test_held_back_events_are_passed_on_at_phase_end_and_flush() -> None:
    sent: list[ProgressEvent] = []
    report = Throttle(sent.append, interval=60)
    for done in range(5):
        report(ProgressEvent(Phase.DUMP, done, 100))  # total is an estimate: never reached
    report(ProgressEvent(Phase.COMMIT, 0, 100))
    report(ProgressEvent(Phase.COMMIT, 7, 100))
    report.flush()
    report.flush()  # nothing left: no repeat
    assert [(e.phase, e.bytes_done) for e in sent] == [
        (Phase.DUMP, 0), (Phase.DUMP, 4), (Phase.COMMIT, 0), (Phase.COMMIT, 7),
    ]


def test_throttle_passes_one_event_per_interval() -> None:
    sent: list[ProgressEvent] = []
    report = Throttle(sent.append, interval=0.05)
    deadline = time.monotonic() + 0.5
    done = 0
    while time.monotonic() < deadline:
        done += 1
        report(ProgressEvent(Phase.COMMIT, done, 10**9))
    assert 2 <= len(sent) <= 12  # at most one per interval; this thread may lose the CPU meanwhile
    assert [e.bytes_done for e in sent] == sorted(e.bytes_done for e in sent)
