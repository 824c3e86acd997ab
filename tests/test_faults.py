"""Seeded SIGKILL of the daemon during checkpoints and restores (issue #10).

Each trial (tests/faultlib.py:run_trial) runs one operation on a sentinel workload, kills
the daemon at a seeded point (a phase's first progress event plus a few ms, or a random
delay), restarts it, and checks: no process of the trial left stopped or half-restored,
every surviving workload holds exactly the source's memory, a restored copy that did not
survive never ran, no checkpoint lost its source without a snapshot, every listed
snapshot is whole (fsck, restores), fsck clean apart from the chunk corrupted on purpose,
no staging leftovers nor chunk temporaries.

One trial per kill point of each kind (17): the first seed from SNAPD_FAULT_SEED (default
10010) on whose trial kills there; scripts/faults.py runs many more and prints a table of
outcomes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faultlib import KINDS, covering_seeds, run_trial

SEED = int(os.environ.get("SNAPD_FAULT_SEED", "10010"))
TRIALS = [(kind, seed) for kind in KINDS for seed in covering_seeds(kind, SEED)]


@pytest.mark.parametrize(("kind", "seed"), TRIALS, ids=[f"{kind}-seed{seed}" for kind, seed in TRIALS])
def test_sigkill_of_the_daemon_loses_nothing_and_leaves_nothing_half_done(tmp_path: Path, kind: str,
                                                                         seed: int) -> None:
    """Invariants after a SIGKILL of the daemon at a seeded point of one operation and a
    restart: see the module docstring (reproduce with scripts/faults.py --trials 1
    --kinds KIND --seed SEED)."""
    result = run_trial(tmp_path / "trial", kind, seed)
    assert not result.violations, result.describe()
