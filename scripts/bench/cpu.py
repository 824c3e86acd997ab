#!/usr/bin/env python3
"""Benchmark snapd against the stock criu CLI on the same CPU process, in one run.

    sudo .venv/bin/python scripts/bench/cpu.py [--size-mb 1536] [--rounds 1] [--keep-dir] [--json]

Each round, on one workload process (its pid survives every restore):
  1. snapd: checkpoint through the Python client (timed client-side, end to end,
     until the snapshot is durable and the source stopped), then restore (timed
     the same way); the memory checksum is verified after the restore, and the
     snapshot is deleted so that no round deduplicates against an earlier one;
  2. stock: `criu dump -t PID -D DIR` then `criu restore -D DIR -d`, timed as
     subprocesses, checksum verified. snapd makes its snapshot durable and stock
     criu does not, so the stock images are fsynced afterwards and timed
     separately, for a "checkpoint incl. fsync" row.

The workload holds --size-mb of memory: 55% random bytes, 25% zero-filled pages
(written, so really resident), 5% shared anonymous random bytes and 15% a read-only private mmap of a file (CRIU
does not copy such pages into the images). Nothing is dropped from the page
cache: it is hot for both sides. stock criu runs first in a round (see bench_round). Throughput
(GB/s, GB = 1e9 bytes) is CRIU image bytes per second for both sides; snapd also
reports the bytes it stored (compressed, deduplicated).
Both sides use the same CRIU binary; snapd logs at CRIU level 4 (its default),
stock criu at its own default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lib import (
    GB,
    BenchError,
    Daemon,
    DaemonFailed,
    PhaseClock,
    become_subreaper,
    fsync_images,
    image_bytes,
    locate_criu,
    reap_pid,
    run_criu,
    wait_until,
)
from snapd_client import SnapdClient

RANDOM_SHARE, ZERO_SHARE, SHARED_SHARE = 0.55, 0.25, 0.05

WORKLOAD = '''\
"""Hold random, zero-filled, shared and file-backed memory; on SIGUSR1 report their SHA-256.

usage: workload.py RANDOM_MB ZERO_MB SHARED_MB FILE_MB BACKING_FILE REPORT
report: "<pid> <sha256 hex>", replaced atomically (a new inode each time)
"""
import hashlib
import mmap
import os
import signal
import sys
import time

CHUNK = 16 << 20
random_mb, zero_mb, shared_mb, file_mb = (int(a) for a in sys.argv[1:5])
backing, report = sys.argv[5], sys.argv[6]


def anonymous(size_mb, make, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS):
    region = mmap.mmap(-1, size_mb << 20, flags=flags)
    for off in range(0, len(region), CHUNK):
        n = min(CHUNK, len(region) - off)
        region[off : off + n] = make(n)
    return region


regions = [anonymous(random_mb, os.urandom), anonymous(zero_mb, bytes),
           anonymous(shared_mb, os.urandom, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)]
with open(backing, "rb") as f:
    regions.append(mmap.mmap(f.fileno(), file_mb << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ))


def check(*_args):
    digest = hashlib.sha256()
    for region in regions:
        digest.update(region)
    tmp = report + ".tmp"
    with open(tmp, "w") as out:
        out.write(f"{os.getpid()} {digest.hexdigest()}")
    os.replace(tmp, report)


check()
signal.signal(signal.SIGUSR1, check)
while True:
    time.sleep(0.05)
'''


class Workload:
    """The benchmarked process. CRIU restores it with the same pid; each
    incarnation is (re)parented to us and reaped by us."""

    def __init__(self, root: Path, size_mb: int) -> None:
        self.script = root / "workload.py"
        self.backing = root / "backing.bin"
        self.report = root / "workload.report"
        self.random_mb = round(size_mb * RANDOM_SHARE)
        self.zero_mb = round(size_mb * ZERO_SHARE)
        self.shared_mb = round(size_mb * SHARED_SHARE)
        self.file_mb = size_mb - self.random_mb - self.zero_mb - self.shared_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.sha256 = ""

    def start(self) -> None:
        self.script.write_text(WORKLOAD)
        with open(self.backing, "wb") as f:
            for _ in range(self.file_mb):
                f.write(os.urandom(1 << 20))
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), str(self.random_mb), str(self.zero_mb), str(self.shared_mb), str(self.file_mb),
             str(self.backing), str(self.report)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.script.parent, start_new_session=True,
        )
        self.pid = self.proc.pid
        wait_until(self.report.exists, 300, "the workload to fill its memory")
        _pid, self.sha256 = self.report.read_text().split()

    def verify(self, after: str) -> None:
        """Ask the (restored) process for its checksum and compare with the original."""
        before = self.report.stat().st_ino
        os.kill(self.pid, signal.SIGUSR1)
        wait_until(lambda: self.report.stat().st_ino != before, 120, f"a checksum after {after}")
        pid, sha256 = self.report.read_text().split()
        if int(pid) != self.pid or sha256 != self.sha256:
            raise BenchError(f"memory differs after {after}: pid {pid} sha256 {sha256}, "
                             f"expected pid {self.pid} sha256 {self.sha256}")

    def reap(self, timeout: float = 60) -> None:
        """Wait until the current incarnation (killed by a checkpoint) is gone and its pid free."""
        if self.proc is not None:
            self.proc.wait(timeout)
            self.proc = None
            return
        reap_pid(self.pid, timeout)

    def kill(self) -> None:
        """Kill whatever incarnation is alive (checked by command line) and reap it."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return
        if str(self.script).encode() in cmdline:
            os.kill(self.pid, signal.SIGKILL)
            self.reap()
        elif not cmdline:  # a zombie: a checkpoint killed it before a failure
            self.reap()


@dataclass
class Round:
    snapd_checkpoint_s: float = 0.0
    snapd_restore_s: float = 0.0
    snapd_image_bytes: int = 0
    snapd_stored_bytes: int = 0
    snapd_second_new_bytes: int = 0
    snapd_daemon_checkpoint_s: float = 0.0
    snapd_daemon_restore_s: float = 0.0
    snapd_checkpoint_phases: dict[str, float] = field(default_factory=dict)
    snapd_restore_phases: dict[str, float] = field(default_factory=dict)
    stock_dump_s: float = 0.0
    stock_fsync_s: float = 0.0
    stock_restore_s: float = 0.0
    stock_image_bytes: int = 0


def bench_round(n: int, workload: Workload, client: SnapdClient, criu: str, root: Path, keep: bool) -> Round:
    """Stock criu first, then snapd, on the same process: a stock restore brings every
    dumped page back resident, so both dumps see the same memory (a snapd restore
    leaves all-zero pages of big regions unallocated, which would shrink the next dump)."""
    r = Round()
    images = root / f"stock-{n}"
    images.mkdir()
    r.stock_dump_s = run_criu(criu, ["dump", "-t", str(workload.pid)], images, "dump.log")
    r.stock_fsync_s = fsync_images(images)
    r.stock_image_bytes = image_bytes(images)
    workload.reap()
    r.stock_restore_s = run_criu(criu, ["restore", "-d"], images, "restore.log")
    workload.verify("stock criu restore")
    if not keep:
        shutil.rmtree(images)

    clock = PhaseClock()
    snap = client.checkpoint(workload.pid, name=f"bench-{n}", on_progress=clock)
    ended = time.monotonic()
    r.snapd_checkpoint_s = ended - clock.started
    r.snapd_checkpoint_phases = clock.durations(ended)
    r.snapd_daemon_checkpoint_s = snap.checkpoint_seconds
    r.snapd_image_bytes = snap.raw_bytes
    r.snapd_stored_bytes = snap.stored_bytes
    workload.reap()

    clock = PhaseClock()
    result = client.restore(snap.id, on_progress=clock)
    ended = time.monotonic()
    r.snapd_restore_s = ended - clock.started
    r.snapd_restore_phases = clock.durations(ended)
    r.snapd_daemon_restore_s = result.duration_seconds
    if result.root_pid != workload.pid:
        raise BenchError(f"snapd restored pid {result.root_pid}, expected {workload.pid}")
    workload.verify("snapd restore")
    again = client.checkpoint(workload.pid, name=f"bench-{n}", leave_running=True)
    r.snapd_second_new_bytes = again.new_bytes
    client.delete(again.id)
    client.delete(snap.id, force=True)  # its restored copy still runs
    return r


def median(rounds: list[Round], get: Callable[[Round], float]) -> float:
    return statistics.median(get(r) for r in rounds)


def summary(rounds: list[Round]) -> list[dict[str, float | str]]:
    snapd_gb = median(rounds, lambda r: r.snapd_image_bytes) / GB
    stock_gb = median(rounds, lambda r: r.stock_image_bytes) / GB
    rows = [
        ("checkpoint", lambda r: r.snapd_checkpoint_s, lambda r: r.stock_dump_s),
        ("checkpoint incl. fsync", lambda r: r.snapd_checkpoint_s, lambda r: r.stock_dump_s + r.stock_fsync_s),
        ("restore", lambda r: r.snapd_restore_s, lambda r: r.stock_restore_s),
    ]
    table: list[dict[str, float | str]] = []
    for name, snapd_of, stock_of in rows:
        snapd_s, stock_s = median(rounds, snapd_of), median(rounds, stock_of)
        table.append({"operation": name, "snapd_s": round(snapd_s, 3), "stock_s": round(stock_s, 3),
                      "ratio": round(snapd_s / stock_s, 2), "snapd_gb_per_s": round(snapd_gb / snapd_s, 3),
                      "stock_gb_per_s": round(stock_gb / stock_s, 3)})
    return table


def print_table(criu_version: str, workload: Workload, table: list[dict[str, float | str]], rounds: list[Round]) -> None:
    w = workload
    print(f"snapd vs stock criu {criu_version} on one {w.random_mb + w.zero_mb + w.shared_mb + w.file_mb} MiB process "
          f"({w.random_mb} MiB random, {w.zero_mb} MiB zero-filled, {w.shared_mb} MiB shared random, "
          f"{w.file_mb} MiB file-backed), "
          f"{len(rounds)} round(s){', medians' if len(rounds) > 1 else ''}; page cache hot for both, nothing dropped")
    print(f"CRIU image size: snapd {median(rounds, lambda r: r.snapd_image_bytes) / GB:.3f} GB "
          f"(stored by snapd: {median(rounds, lambda r: r.snapd_stored_bytes) / GB:.3f} GB), "
          f"stock {median(rounds, lambda r: r.stock_image_bytes) / GB:.3f} GB (GB = 1e9 bytes); "
          f"on disk / raw {median(rounds, lambda r: r.snapd_stored_bytes / r.snapd_image_bytes):.3f}; a second "
          f"snapshot of the same memory added {median(rounds, lambda r: r.snapd_second_new_bytes) / 1e6:.1f} MB\n")
    header = ("operation", "snapd s", "stock criu s", "ratio (snapd/stock)", "snapd GB/s", "stock GB/s")
    keys = ("operation", "snapd_s", "stock_s", "ratio", "snapd_gb_per_s", "stock_gb_per_s")
    rows = [header, *[tuple(str(row[k]) for k in keys) for row in table]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(wd) if j == 0 else cell.rjust(wd) for j, (cell, wd) in enumerate(zip(row, widths))))
        if i == 0:
            print("-+-".join("-" * wd for wd in widths))
    print("\nsnapd phases are timed client-side from the first progress event of each phase; the first "
          "dump event comes at the daemon's first progress tick, so 'validate' includes the start of the dump")
    for n, r in enumerate(rounds):
        ck = ", ".join(f"{k} {v:.3f}" for k, v in r.snapd_checkpoint_phases.items())
        rs = ", ".join(f"{k} {v:.3f}" for k, v in r.snapd_restore_phases.items())
        print(f"round {n}: snapd checkpoint phases (s): {ck}; daemon-reported checkpoint_seconds "
              f"{r.snapd_daemon_checkpoint_s:.3f} (up to the end of the dump)")
        print(f"round {n}: snapd restore phases (s): {rs}; daemon-reported {r.snapd_daemon_restore_s:.3f}")
        print(f"round {n}: stock dump {r.stock_dump_s:.3f} s + fsync {r.stock_fsync_s:.3f} s, "
              f"restore {r.stock_restore_s:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1536, help="workload memory in MiB (default 1536)")
    parser.add_argument("--rounds", type=int, default=1, help="checkpoint/restore rounds per side (default 1)")
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the temp dir: stock images and CRIU logs, daemon log (snapd snapshots are deleted)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--serve-option", action="append", default=[], metavar="ARG",
                        help="extra argument for snapd serve, e.g. --serve-option=--inject-huge-pages (repeatable)")
    parser.add_argument("--criu", help="CRIU binary for both sides (default: what scripts/install-criu.sh prints)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("must run as root (CRIU needs it)")
    if args.size_mb < 8 or args.rounds < 1:
        parser.error("--size-mb must be >= 8 and --rounds >= 1")

    criu = args.criu or locate_criu()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))  # clean up on SIGTERM too
    become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="snapd-bench-"))
    workload = Workload(root, args.size_mb)
    daemon = Daemon(root, tuple(args.serve_option), criu=criu)
    rounds: list[Round] = []
    try:
        print(f"bench dir {root}; starting daemon and a {args.size_mb} MiB workload", file=sys.stderr)
        daemon.start(timeout=60)
        workload.start()
        with SnapdClient(daemon.target) as client:
            criu_version = client.status().criu_version
            for n in range(args.rounds):
                rounds.append(bench_round(n, workload, client, criu, root, args.keep_dir))
                print(f"round {n} done, checksums verified", file=sys.stderr)
    finally:
        workload.kill()
        daemon.close()
        if args.keep_dir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    table = summary(rounds)
    report: dict[str, object] = {
        "criu": criu,
        "criu_version": criu_version,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "workload": {"size_mb": args.size_mb, "random_mb": workload.random_mb, "zero_mb": workload.zero_mb, "shared_mb": workload.shared_mb,
                     "file_mb": workload.file_mb},
        "page_cache": "hot for both sides (nothing dropped)",
        "summary": table,
        "rounds": [asdict(r) for r in rounds],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(criu_version, workload, table, rounds)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, DaemonFailed) as exc:
        print(f"bench/cpu.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
