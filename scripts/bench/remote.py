#!/usr/bin/env python3
"""Benchmark the remote tier against the raw S3 throughput of the same server, in one run.

    sudo .venv/bin/python scripts/bench/remote.py [--size-mb 1024] [--threads 16] [--json]

A SeaweedFS S3 server (tests/s3server.py) runs on loopback, and two snapd
daemons on separate state directories stand for two hosts. In order:
  1. raw S3: PUT then GET of --size-mb of random 2 MiB objects (snapd's chunk
     size) with --threads parallel requests through obstore: the ceiling;
  2. host A checkpoints a process holding --size-mb of random bytes and pushes
     it (GB/s = bytes uploaded / push time, client-side);
  3. host B restores it, pulled on demand: the two-host restore time, until
     the tree runs (server-side) and until the call returns with the pulled
     copy published (memory checksum verified); then, killed, restores it
     again from its local store;
  4. host B deletes its copy and pulls the snapshot whole (GB/s = bytes fetched
     / pull time).
Ratios are push/PUT and pull/GET. Random bytes: nothing compresses or dedupes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    """(PUT, GET) GB/s of ``size`` bytes in 2 MiB objects with ``threads`` parallel requests."""
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
    return len(keys) * CHUNK / put / GB, got / get / GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise BenchError("run as root (CRIU)")
    become_subreaper()
    criu = locate_criu()
    with tempfile.TemporaryDirectory(prefix="snapd-bench-remote-") as tmp:
        root = Path(tmp)
        s3 = S3Server(root / "s3").start()
        hosts: list[Daemon] = []
        pid = 0
        try:
            put_gbs, get_gbs = raw_s3(s3, args.size_mb << 20, args.threads)
            for name in ("a", "b"):
                (root / name).mkdir()
                hosts.append(Daemon(root / name, remote_args(root, s3, "bench", threads=str(args.threads)),
                                    criu=criu).start())
            a, b = hosts
            report = root / "memhold.report"
            pid = subprocess.Popen([sys.executable, str(REPO / "tests/workloads/memhold.py"), str(args.size_mb),
                                    str(report)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   cwd=REPO / "tests/workloads").pid
            wait_until(report.exists, 300, "the workload to fill its memory")
            digest = report.read_text().split()[1]
            with a.client() as ca, b.client() as cb:
                snap = ca.checkpoint(pid)
                reap_pid(pid)
                started = time.monotonic()
                pushed = ca.push(snap.id)
                push_s = time.monotonic() - started
                started = time.monotonic()
                restored = cb.restore(snap.id)
                remote_restore_s = time.monotonic() - started
                if ask(pid, report)[1] != digest:
                    raise BenchError("the memory of the process restored on host b differs")
                os.kill(pid, signal.SIGKILL)
                reap_pid(pid)
                started = time.monotonic()
                cb.restore(snap.id)
                local_restore_s = time.monotonic() - started
                os.kill(pid, signal.SIGKILL)
                reap_pid(pid)
                pid = 0
                cb.delete(snap.id)
                started = time.monotonic()
                pulled = cb.pull(snap.id)
                pull_s = time.monotonic() - started
        finally:
            if pid:
                os.kill(pid, signal.SIGKILL)
            for d in hosts:
                d.close()
            s3.kill()
    push_gbs = pushed.uploaded_bytes / push_s / GB
    pull_gbs = pulled.fetched_bytes / pull_s / GB
    result = {
        "size_mb": args.size_mb, "threads": args.threads, "raw_put_gbs": round(put_gbs, 3),
        "raw_get_gbs": round(get_gbs, 3), "push_gbs": round(push_gbs, 3), "pull_gbs": round(pull_gbs, 3),
        "push_vs_put": round(push_gbs / put_gbs, 2), "pull_vs_get": round(pull_gbs / get_gbs, 2),
        "uploaded_bytes": pushed.uploaded_bytes, "fetched_bytes": pulled.fetched_bytes,
        "two_host_restore_s": round(remote_restore_s, 2), "two_host_running_after_s": restored.duration_seconds,
        "pulled_by_restore_bytes": restored.pulled_bytes,
        "local_restore_s": round(local_restore_s, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"remote tier, {args.size_mb} MiB of random bytes, {args.threads} parallel transfers, SeaweedFS "
              "on loopback")
        print(f"  raw S3 PUT {put_gbs:6.2f} GB/s   push {push_gbs:6.2f} GB/s  ({push_gbs / put_gbs:.2f}x raw)")
        print(f"  raw S3 GET {get_gbs:6.2f} GB/s   pull {pull_gbs:6.2f} GB/s  ({pull_gbs / get_gbs:.2f}x raw)")
        print(f"  restore on host b, pulled on demand: tree running after {restored.duration_seconds:.2f} s, "
              f"call done (pulled copy published) after {remote_restore_s:.2f} s "
              f"({restored.pulled_bytes / GB:.2f} GB fetched); from its local store: {local_restore_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
