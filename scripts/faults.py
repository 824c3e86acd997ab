#!/usr/bin/env python3
"""Fault trials against a real snapd daemon and real CRIU.

Campaign ``sigkill`` (issue #10, the default): each trial starts a private daemon, a workload
holding seeded random memory, runs one operation (checkpoint, checkpoint --leave-running,
restore, restore of a snapshot with a corrupted chunk), SIGKILLs the daemon at a seeded point,
restarts it and checks the invariants of tests/faultlib.py:run_trial.

Campaign ``full-disk`` (issue #23): each trial fills a small tmpfs at one phase (--kinds picks
among tests/fulldisk.py:PHASES: a checkpoint, a restore, an import or an export with the disk
full before or during it, hold records on a full disk, the daemon's log on a full disk or
its stderr closed) and checks the invariants of tests/fulldisk.py:run_phase.

Prints one line per trial and a table of outcomes per kind; exits 1 when any trial broke an
invariant.

Campaign ``fsck-under-gc`` (issue #23) runs tests/fscklib.py's campaign instead: ``--trials``
fsck calls under checkpoint, gc and rm load, printing the counts; exits 1 on a false report
or a missed corruption.

    sudo SNAPD_CRIU=/opt/gpu-snapd/criu/bin/criu \\
        PYTHONPATH=daemon:client:proto .venv/bin/python scripts/faults.py --trials 200 --seed 7
    sudo ... scripts/faults.py --campaign full-disk --trials 24

Campaign ``manifests`` (issue #23) runs tests/manifestlib.py's campaign instead: ``--trials``
random bit flips of a real snapshot's manifest plus every semantic edit, each imported and
restored if taken in, ``--on-disk`` of them also written into the store under a stopped
daemon; prints each outcome, the counts and a table per kind; exits 1 on a broken invariant.

    sudo ... scripts/faults.py --campaign manifests --trials 200 --on-disk 10 --seed 23
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import faultlib  # noqa: E402
import fscklib  # noqa: E402
import fulldisk  # noqa: E402
import manifestlib  # noqa: E402
from harness import Daemon, Workloads  # noqa: E402
from s3server import S3Server  # noqa: E402

# trial campaigns and their kinds; fsck-under-gc is one run of --trials fsck calls, manifests one
# run of --trials bit flips (and every semantic edit)
CAMPAIGNS = {"sigkill": faultlib.KINDS, "full-disk": tuple(fulldisk.PHASES), "fsck-under-gc": (), "manifests": ()}


def fsck_under_gc(runs: int) -> int:
    """The fsck-under-gc campaign on a private daemon; 1 when it found a false report or
    missed the corrupted chunk."""
    root = Path(tempfile.mkdtemp(prefix="snapd-fsck-gc-"))
    daemon, workloads = Daemon(root).start(), Workloads(root)
    try:
        result = fscklib.run_campaign(daemon, workloads, min_runs=runs, time_limit=max(150.0, runs))
    finally:
        workloads.kill_all()
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"fsck-under-gc: {result.describe()}")
    for line in result.false[:10] + result.errors[:10]:
        print(f"  {line}")
    return 1 if result.false_reports or result.corruption_detected < result.fsck_runs or result.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="number of trials (kinds taken in turn)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="base seed; trial i uses seed+i")
    parser.add_argument("--campaign", choices=sorted(CAMPAIGNS), default="sigkill", help="which faults")
    parser.add_argument("--kinds", default="", help="comma-separated subset of the campaign's kinds (default: all): "
                        + "; ".join(f"{c}: {','.join(k)}" for c, k in CAMPAIGNS.items()))
    parser.add_argument("--serve-option", action="append", default=[], metavar="ARG",
                        help="extra `snapd serve` argument (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the trial directories of violations")
    parser.add_argument("--on-disk", type=int, default=3,
                        help="manifests: how many corruptions also go into the store under a stopped daemon")
    args = parser.parse_args()
    if args.campaign == "fsck-under-gc":
        return fsck_under_gc(args.trials)
    if args.campaign == "manifests":
        return manifest_campaign(args.trials, args.on_disk, args.seed)
    kinds = [k for k in args.kinds.split(",") if k] or list(CAMPAIGNS[args.campaign])
    unknown = set(kinds) - set(CAMPAIGNS[args.campaign])
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")

    s3 = S3Server(Path(tempfile.mkdtemp(prefix="snapd-faults-s3-"))).start() \
        if set(kinds) & set(fulldisk.REMOTE_PHASES) else None
    try:
        return _campaign(args, kinds, s3)
    finally:
        if s3 is not None:
            s3.kill()
            shutil.rmtree(s3.root, ignore_errors=True)


def _campaign(args: argparse.Namespace, kinds: list[str], s3: S3Server | None) -> int:
    table: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kinds}
    bad: list[faultlib.TrialResult | fulldisk.PhaseResult] = []
    base = Path(tempfile.mkdtemp(prefix="snapd-faults-"))
    print(f"base seed {args.seed}, {args.trials} trials, work in {base}", flush=True)
    for i in range(args.trials):
        kind = kinds[i % len(kinds)]
        root = base / f"t{i:04d}"
        started = time.monotonic()
        res: faultlib.TrialResult | fulldisk.PhaseResult
        if args.campaign == "full-disk":
            res = fulldisk.run_phase(root, kind, args.seed + i, s3)
        else:
            res = faultlib.run_trial(root, kind, args.seed + i, tuple(args.serve_option))
        print(f"[{i + 1}/{args.trials}] {time.monotonic() - started:5.1f}s {res.describe()}", flush=True)
        table[kind][res.outcome] += 1
        if res.violations:
            bad.append(res)
        if not (res.violations and args.keep):
            shutil.rmtree(root, ignore_errors=True)

    outcomes = sorted({o for c in table.values() for o in c})
    width = max([len(k) for k in kinds] + [4])
    cols = [max(len(o), 5) for o in outcomes]
    print()
    print(f"{'kind':<{width}}  " + "  ".join(f"{o:>{w}}" for o, w in zip(outcomes, cols)))
    for k in kinds:
        print(f"{k:<{width}}  " + "  ".join(f"{table[k][o]:>{w}}" for o, w in zip(outcomes, cols)))
    if bad:
        print(f"\n{len(bad)} trial(s) broke an invariant; rerun one with --trials 1 --kinds KIND --seed SEED:")
        for r in bad:
            print(r.describe())
    if not args.keep or not bad:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


def manifest_campaign(flips: int, on_disk: int, seed: int) -> int:
    base = Path(tempfile.mkdtemp(prefix="snapd-manifest-faults-"))
    print(f"seed {seed}, {flips} bit flips + {2 * len(manifestlib.SEMANTIC)} semantic edits, work in {base}",
          flush=True)
    workloads = Workloads(base)
    daemon = Daemon(base / "first")
    (base / "first").mkdir()
    try:
        tally = manifestlib.campaign(daemon.start(), workloads, base, flips, seed, on_disk,
                                     lambda o: print(f"{o.kind:<24} {o.outcome:<20} {o.error_class} "
                                                     f"{'; '.join(o.violations)}", flush=True))
    finally:
        workloads.kill_all()
        daemon.close()
        shutil.rmtree(base, ignore_errors=True)
    forged = [o for o in tally.outcomes if o.kind in manifestlib.FORGERIES]
    damaged = [o for o in tally.outcomes if o.kind != "sharing" and o not in forged]
    print(f"\n{len(damaged)} corruptions (forgeries apart): {dict(collections.Counter(o.outcome for o in damaged))}")
    print(f"forgeries only a signature catches: {dict(collections.Counter(o.outcome for o in forged))}")
    print(f"the snapshot sharing the chunks: {tally.outcomes[-1].outcome}\n{tally.table()}")
    bad = [v for o in tally.outcomes if o not in forged for v in o.violations]
    bad += [v for o in forged for v in o.violations if v.startswith("chunk")]
    for v in bad:
        print(f"VIOLATION {v}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
