"""Messages a user reads (issue #23, item 7): never a Python exception name, and a killed
restore tree's pids named when they are not free yet."""

from __future__ import annotations

import errno
import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from harness import Daemon, snapd, wait_for
from snapd_daemon.api.status import internal
from snapd_daemon.errors import describe_exception
from snapd_daemon.restore import pids
from snapd_daemon.runtime.holds import KILL, HoldRecord
from snapd_daemon.store import bundle


def test_an_import_whose_manifest_lacks_a_field_names_the_field_not_a_python_error(daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    writer = bundle.Writer()
    manifest = {"id": "20260101T000000Z-0123456789ab", "files": []}
    stream = tmp_path / "broken.snapd"
    stream.write_bytes(b"".join(bytes(p) for p in [*writer.header(json.dumps(manifest).encode()), *writer.end()]))
    out = snapd(daemon, "import", str(stream))
    assert out.returncode == 32, out.stderr  # ManifestDamaged: every manifest is checked as it is opened
    assert "is missing" in out.stderr and "Error" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_unexpected_failures_say_what_failed_and_point_to_the_log_without_a_class_name() -> None:
    assert describe_exception(KeyError("processes")) == "the field 'processes' is missing"
    assert describe_exception(OSError(28, "No space left on device", "/x/y")) == "No space left on device: /x/y"
    message = internal(ZeroDivisionError("division by zero"), "restore op-0123456789ab", Path("/")).message
    assert "restore op-0123456789ab failed unexpectedly (division by zero)" in message and "log" in message
    assert "ZeroDivisionError" not in message


def test_a_full_disk_no_path_mapped_is_still_space_full(tmp_path: Path) -> None:
    """The API edge's safety net: an ENOSPC that escaped its path's own mapping is exit 18."""
    err = internal(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "pins" / "x")), "PinSnapshot",
                   tmp_path)
    assert type(err).__name__ == "SpaceFull" and err.exit_code == 18 and err.status == "RESOURCE_EXHAUSTED"
    assert f"no space left in {tmp_path / 'pins'} during PinSnapshot" in err.message, err.message


def test_a_killed_tree_whose_pid_stays_held_by_an_unreaped_zombie_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The restored tree's pids are waited for until free; a zombie whose parent never reaps it
    (here a `sleep` that forked it) is returned, so that the restore's answer names it."""
    holder = subprocess.Popen(["sh", "-c", "sleep 1000 & exec sleep 1001"], start_new_session=True)
    try:
        wait_for(lambda: psutil.Process(holder.pid).children(), 10, "the child of the holder")
        child = psutil.Process(holder.pid).children()[0]
        record = HoldRecord(processes=[(child.pid, child.create_time())], action=KILL, since=time.time() - 60)
        monkeypatch.setattr(pids, "_FREE_WAIT_SECONDS", 1.0)
        outcome = pids.kill_tree(record)
        assert outcome.alive == [] and outcome.exiting == [child.pid]
        assert pids.parents(outcome.exiting) == [str(holder.pid)]
    finally:
        holder.kill()
        holder.wait()
