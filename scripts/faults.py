#!/usr/bin/env python3
"""Seeded SIGKILL fault trials against a real snapd daemon and real CRIU (issue #10), and
manifest corruptions (issue 23).

Each trial starts a private daemon, a workload holding seeded random memory, runs one
operation (checkpoint, checkpoint --leave-running, restore, restore of a snapshot with a
corrupted chunk), SIGKILLs the daemon at a seeded point, restarts it and checks the
invariants of tests/faultlib.py:run_trial. Prints one line per trial and a table of
outcomes per kind; exits 1 when any trial broke an invariant.

    sudo SNAPD_CRIU=/opt/gpu-snapd/criu/bin/criu \\
        PYTHONPATH=daemon:client:proto .venv/bin/python scripts/faults.py --trials 200 --seed 7

With ``--manifests FLIPS`` it runs tests/manifestlib.py's campaign instead: FLIPS random bit
flips of a real snapshot's manifest plus every semantic edit, each imported and restored
if taken in, ``--on-disk`` of them also written into the store under a stopped daemon;
prints each outcome, the counts and a table per kind; exits 1 on a broken invariant.

    sudo ... scripts/faults.py --manifests 200 --on-disk 10 --seed 23
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
import manifestlib  # noqa: E402
from harness import Daemon, Workloads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="number of trials (kinds taken in turn)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="base seed; trial i uses seed+i")
    parser.add_argument("--kinds", default=",".join(faultlib.KINDS),
                        help=f"comma-separated subset of {','.join(faultlib.KINDS)}")
    parser.add_argument("--serve-option", action="append", default=[], metavar="ARG",
                        help="extra `snapd serve` argument (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the trial directories of violations")
    parser.add_argument("--manifests", type=int, default=0, metavar="FLIPS",
                        help="run the manifest corruption campaign with this many random bit flips instead")
    parser.add_argument("--on-disk", type=int, default=3,
                        help="with --manifests: how many corruptions also go into the store under a stopped daemon")
    args = parser.parse_args()
    if args.manifests:
        return manifest_campaign(args.manifests, args.on_disk, args.seed)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(faultlib.KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")

    table: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kinds}
    bad: list[faultlib.TrialResult] = []
    base = Path(tempfile.mkdtemp(prefix="snapd-faults-"))
    print(f"base seed {args.seed}, {args.trials} trials, work in {base}", flush=True)
    for i in range(args.trials):
        kind = kinds[i % len(kinds)]
        root = base / f"t{i:04d}"
        started = time.monotonic()
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
