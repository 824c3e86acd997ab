"""fsck under concurrent gc and rm (issue #23, item 5): never a false report, still the real one."""

from __future__ import annotations

from fscklib import run_campaign
from harness import Daemon, Workloads


def test_fsck_under_gc_and_rm_reports_only_real_damage(daemon: Daemon, workloads: Workloads) -> None:
    """60 `fsck` calls while one thread checkpoints two real processes again and again,
    another runs `gc --keep-last 1` and a third `rm`s older snapshots, their chunks shared:
    snapshots are deleted under running fscks (200 calls saw 77 such races, 60 see ~20), yet
    not one reports a chunk of a snapshot deleted meanwhile (nor logs one as missing), and
    every one reports the chunk corrupted on disk of a pinned snapshot."""
    result = run_campaign(daemon, workloads, min_runs=60)
    assert not result.errors, result.errors[:5]
    assert result.fsck_runs >= 60 and result.snapshots_gone > 0, result.describe()
    assert result.expired_by_gc > 0 and result.removed_by_rm > 0, result.describe()
    assert result.false_reports == 0, (result.describe(), result.false[:5])
    assert result.missing_logged == 0, result.describe()
    assert result.corruption_detected == result.fsck_runs, result.describe()
