"""A real file system that fills up, once at each phase (issue #23): tests/fulldisk.py mounts a
small tmpfs for the daemon (or the part a phase is about), fills it before or during one
operation and checks that the call ends with StoreFull / RestoreSpaceFull / ImportSpaceFull /
ExportSpaceFull (exit 18) and a message naming the file system, that no temporary is left (also
after a restart on the full disk), that the source and the store are intact, and that a log
that cannot be written never fails or blocks an operation. scripts/faults.py --campaign
full-disk runs the same trials and prints a table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fulldisk import PHASES, REMOTE_PHASES, run_phase
from s3server import S3Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.mark.parametrize("phase", [p for p in PHASES if p not in REMOTE_PHASES])
def test_a_full_disk_at_each_phase_is_refused_cleanly(tmp_path: Path, phase: str) -> None:
    result = run_phase(tmp_path / "trial", phase)
    assert not result.violations, result.describe()


@pytest.mark.parametrize("phase", REMOTE_PHASES)
def test_a_full_disk_under_a_pull_is_refused_cleanly(tmp_path: Path, s3: S3Server, phase: str) -> None:
    """A pull (and a restore of a snapshot only the bucket holds) into a full store, on SeaweedFS."""
    result = run_phase(tmp_path / "trial", phase, s3=s3)
    assert not result.violations, result.describe()
