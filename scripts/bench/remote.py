#!/usr/bin/env python3
"""Benchmark the remote tier against the raw S3 throughput of the same server, in one run.

    sudo .venv/bin/python scripts/bench/remote.py [--size-mb 1024] [--threads 16] [--rounds 3] [--json]

A SeaweedFS S3 server (tests/s3server.py) runs on loopback, and two snapd
daemons on separate state directories stand for two hosts. Host A checkpoints
a process holding --size-mb of random bytes once; then each round:
  1. raw S3: PUT then GET of as many bytes as the snapshot stores, in random
     2 MiB objects (snapd's chunk size), --threads parallel requests through
     obstore: the ceiling of this server, measured beside the rest;
  2. the bucket emptied, host A pushes the snapshot (GB/s = bytes uploaded /
     push time, client-side);
  3. host B restores it, pulled on demand: the two-host restore time, until
     the tree runs (server-side) and until the call returns with the pulled
     copy published (memory checksum verified); then, killed, it is restored
     again from B's own store;
  4. host B deletes its copy and pulls the snapshot whole (GB/s = bytes
     fetched / pull time), and deletes it again.
Ratios are push/PUT and pull/GET, per round; medians are printed. Random
bytes: nothing compresses or dedupes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore

from lib import GB, REPO, BenchError, Daemon, become_subreaper, locate_criu, reap_pid, wait_until

sys.path.insert(0, str(REPO / "tests"))
from harness import ask  # noqa: E402
from remotelib import remote_args  # noqa: E402
from s3server import S3Server  # noqa: E402

CHUNK = 2 << 20


def raw_s3(s3: S3Server, size: int, threads: int) -> tuple[float, float]:
    """(PUT, GET) GB/s of ``size`` bytes in 2 MiB objects with ``threads`` parallel requests
    (removed again afterwards)."""
    store = s3.store("raw")
    blobs = [os.urandom(CHUNK) for _ in range(16)]
    keys = [f"o/{i}" for i in range(size // CHUNK)]
    with ThreadPoolExecutor(threads) as pool:
        started = time.monotonic()
        list(pool.map(lambda i: obstore.put(store, keys[i], blobs[i % 16]), range(len(keys))))
        put = time.monotonic() - started
        started = time.monotonic()
        got = sum(pool.map(lambda k: len(obstore.get(store, k).bytes()), keys))
        get = time.monotonic() - started
    obstore.delete(store, keys)
    return len(keys) * CHUNK / put / GB, got / get / GB


def empty_prefix(s3: S3Server, prefix: str) -> None:
    store = s3.store(prefix)
    keys = [str(m["path"]) for batch in obstore.list(store) for m in batch]
    if keys:
        obstore.delete(store, keys)


class Bench:
    """Host a holds the snapshot; each round empties the bucket, pushes, restores on host b
    pulled on demand, restores there again from b's store, then removes b's copy and pulls it."""

    def __init__(self, root: Path, s3: S3Server, threads: int, criu: str) -> None:
        self.root, self.s3, self.threads = root, s3, threads
        self.hosts: list[Daemon] = []
        for name in ("a", "b"):
            (root / name).mkdir()
            self.hosts.append(Daemon(root / name, remote_args(root, s3, "bench", threads=str(threads)),
                                     criu=criu).start())
        self.report = root / "memhold.report"
        self.pid = 0
        self.digest = ""
        self.snapshot = ""

    def checkpoint(self, size_mb: int) -> None:
        self.pid = subprocess.Popen([sys.executable, str(REPO / "tests/workloads/memhold.py"), str(size_mb),
                                     str(self.report)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    cwd=REPO / "tests/workloads").pid
        wait_until(self.report.exists, 300, "the workload to fill its memory")
        self.digest = self.report.read_text().split()[1]
        with self.hosts[0].client() as c:
            self.snapshot = c.checkpoint(self.pid).id
        reap_pid(self.pid)

    def _kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        reap_pid(self.pid)

    def round(self) -> dict[str, float]:
        a, b = self.hosts
        put_gbs, get_gbs = raw_s3(self.s3, (self.size_bytes()), self.threads)
        empty_prefix(self.s3, "bench")
        with a.client() as ca, b.client() as cb:
            started = time.monotonic()
            pushed = ca.push(self.snapshot)
            push_s = time.monotonic() - started
            started = time.monotonic()
            restored = cb.restore(self.snapshot)
            remote_restore_s = time.monotonic() - started
            if ask(self.pid, self.report)[1] != self.digest:
                raise BenchError("the memory of the process restored on host b differs")
            self._kill()
            local = cb.restore(self.snapshot)
            self._kill()
            cb.delete(self.snapshot, force=True)  # the kill just sent may not be recorded yet
            started = time.monotonic()
            pulled = cb.pull(self.snapshot)
            pull_s = time.monotonic() - started
            cb.delete(self.snapshot)
        push_gbs, pull_gbs = pushed.uploaded_bytes / push_s / GB, pulled.fetched_bytes / pull_s / GB
        return {"raw_put_gbs": put_gbs, "raw_get_gbs": get_gbs, "push_gbs": push_gbs, "pull_gbs": pull_gbs,
                "push_vs_put": push_gbs / put_gbs, "pull_vs_get": pull_gbs / get_gbs,
                "two_host_running_after_s": restored.duration_seconds, "two_host_call_s": remote_restore_s,
                "pulled_by_restore_gb": restored.pulled_bytes / GB, "local_restore_s": local.duration_seconds}

    def size_bytes(self) -> int:
        with self.hosts[0].client() as c:
            return int(c.get(self.snapshot).stored_bytes)

    def close(self) -> None:
        if self.pid and os.path.exists(f"/proc/{self.pid}"):
            self._kill()
        for d in self.hosts:
            d.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise BenchError("run as root (CRIU)")
    become_subreaper()
    criu = locate_criu()
    with tempfile.TemporaryDirectory(prefix="snapd-bench-remote-") as tmp:
        s3 = S3Server(Path(tmp) / "s3").start()
        bench = Bench(Path(tmp), s3, args.threads, criu)
        try:
            bench.checkpoint(args.size_mb)
            rounds = [bench.round() for _ in range(args.rounds)]
        finally:
            bench.close()
            s3.kill()
    median = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}
    if args.json:
        print(json.dumps({"size_mb": args.size_mb, "threads": args.threads, "median": median, "rounds": rounds},
                         indent=2))
        return 0
    m = median
    print(f"remote tier, {args.size_mb} MiB of random bytes, {args.threads} parallel transfers, SeaweedFS on "
          f"loopback; medians of {args.rounds} round(s)")
    print(f"  raw S3 PUT {m['raw_put_gbs']:6.2f} GB/s   push {m['push_gbs']:6.2f} GB/s  ({m['push_vs_put']:.2f}x raw)")
    print(f"  raw S3 GET {m['raw_get_gbs']:6.2f} GB/s   pull {m['pull_gbs']:6.2f} GB/s  ({m['pull_vs_get']:.2f}x raw)")
    print(f"  restore on host b, pulled on demand ({m['pulled_by_restore_gb']:.2f} GB fetched): tree running after "
          f"{m['two_host_running_after_s']:.2f} s, call done (pulled copy published) after "
          f"{m['two_host_call_s']:.2f} s; from b's own store: {m['local_restore_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
