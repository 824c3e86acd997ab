#!/usr/bin/env python3
"""The restore's injection of a bf16-like region, per storage policy, against the machine's
ceiling, in one run.

    sudo .venv/bin/python scripts/bench/inject.py [--size-mb 512] [--threads N] [--raw-below 3 20 35 50]
                                                  [--batch-mb 16] [--rounds 3] [--dir /var/tmp] [--json]
                                                  [--post-copy]

A region of --size-mb of bf16 numbers drawn like model weights (random mantissa bytes
under a few exponents) is stored in 2 MiB chunks as a checkpoint stores them
(``codec.encode``), once per --raw-below percentage (the ``store_raw_below``
setting), in a store under --dir. The restore's ``Delivery`` (--threads threads,
as ``io_threads``; batches of --batch-mb, default ``delivery.BATCH_BYTES``) then writes it into fresh private anonymous memory of a new
process: from the store with its chunk files in the page cache ("hot"), and from
the RAM tier (decoded chunks in /dev/shm; the same for every policy). Printed per
policy: stored / raw size, GB/s (1e9 bytes of region a second, best of
--rounds), CPU seconds per GB (least of --rounds; steadier than GB/s on a busy
machine) and the ratio to the ceiling, process_vm_writev of resident memory with
as many threads and no reads, hashes or decoding (``lib.inject_ceiling``). With
--post-copy, each is also written as a post-copy restore fills (``PostCopy``,
UFFDIO_COPY through a userfaultfd registered over the region as CRIU's lazy pages
register it; no process touches the region meanwhile).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import structlog

from lib import GB, FreshProcess, bf16_weights, inject_ceiling
from snapd_daemon.restore import delivery
from snapd_daemon.restore.delivery import Delivery, Route, Target
from snapd_daemon.restore.postcopy import PostCopy
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store import codec
from snapd_daemon.store.hot import HotTier
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.model import ChunkRef

CHUNK = 2 << 20
MANIFEST = Manifest(id="bench", name="", labels={}, created=0.0, root_pid=1, processes=[], criu_version="",
                    kernel="", hostname="", shell_job=False, leave_running=False)


def fill(root: Path, chunks: list[bytes], raw_below: float, threads: int, hot: HotTier | None = None) -> LocalStore:
    """A store at ``root`` holding ``chunks`` encoded under ``raw_below`` percent (and ``hot``
    holding them decoded, when given)."""
    store = LocalStore(root, threads, hot, raw_below / 100)
    store.recover()

    def put(raw: bytes) -> None:
        cid = codec.chunk_id(raw)
        path = store.chunks.path(cid)
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            f.writelines(codec.encode(raw, store.min_saving))
        if hot is not None:
            hot.add(cid, raw)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, chunks))
    return store


def stored_bytes(store: LocalStore) -> int:
    return sum(size for _, size in store.chunks.all())


def inject(store: LocalStore, refs: list[ChunkRef], threads: int, rounds: int,
           post_copy: bool = False) -> tuple[float, float]:
    """Of ``rounds`` deliveries of ``refs`` into a fresh process each: the best GB/s, and the
    least CPU seconds (this process's threads, system time included: the writes fault the
    target's pages in from here) per GB, which other load on the machine disturbs less.
    ``post_copy``: written as a post-copy restore fills (``PostCopy``: UFFDIO_COPY through a
    userfaultfd registered over the region), not with process_vm_writev."""
    best, cpu = 0.0, float("inf")
    for _ in range(rounds):
        with FreshProcess(len(refs) * CHUNK, uffd=post_copy) as child, ExitStack() as stack:
            routes = [Route(ref, "pages-1.img", i * CHUNK, [Target(0, CHUNK, child.base + i * CHUNK, pid=child.pid)])
                      for i, ref in enumerate(refs)]
            delivery = Delivery(store, MANIFEST, threads, readahead_bytes=0)
            if post_copy:
                post = PostCopy(MANIFEST.id)
                stack.callback(post.close)
                post.receive(child.pid, os.dup(child.uffd))
            started, used = time.monotonic(), time.process_time()
            if post_copy:
                post.start(delivery, routes, {child.pid: child.pid}, lambda _done: None, lambda: None, None,
                           abort=lambda: None)
                post.wait()
            else:
                delivery.run(routes, lambda _done: None)
            gb = len(refs) * CHUNK / GB
            best = max(best, gb / (time.monotonic() - started))
            cpu = min(cpu, (time.process_time() - used) / gb)
    return best, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--raw-below", type=float, nargs="+", default=[3, 20, 35, 50])
    parser.add_argument("--batch-mb", type=int, default=delivery.BATCH_BYTES >> 20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--post-copy", action="store_true",
                        help="also write each as a post-copy restore fills (UFFDIO_COPY through a userfaultfd)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # the fill's lines
    delivery.BATCH_BYTES = args.batch_mb << 20
    chunks = bf16_weights(args.size_mb * (1 << 20) // CHUNK, CHUNK)
    refs = [ChunkRef(codec.chunk_id(raw), len(raw)) for raw in chunks]
    total = len(chunks) * CHUNK
    ceiling = max(inject_ceiling(total, args.threads) for _ in range(args.rounds)) / GB
    rows = []
    work = Path(tempfile.mkdtemp(prefix="snapd-bench-inject-", dir=args.dir))
    ram = Path(tempfile.mkdtemp(prefix="snapd-bench-inject-", dir="/dev/shm"))
    try:
        hot = HotTier(ram / "hot")
        ram_store = fill(work / "ram", chunks, 3, args.threads, hot)
        ram_rate, ram_cpu = inject(ram_store, refs, args.threads, args.rounds)
        ram_fill = inject(ram_store, refs, args.threads, args.rounds, post_copy=True)[0] if args.post_copy else None
        for percent in args.raw_below:
            store = fill(work / f"raw-below-{percent:g}", chunks, percent, args.threads)
            rate, cpu = inject(store, refs, args.threads, args.rounds)
            row = {"raw_below": percent, "stored_ratio": round(stored_bytes(store) / total, 3),
                   "hot_gbps": round(rate, 2), "hot_cpu_s_per_gb": round(cpu, 3)}
            if args.post_copy:
                rate, cpu = inject(store, refs, args.threads, args.rounds, post_copy=True)
                row |= {"post_copy_gbps": round(rate, 2), "post_copy_cpu_s_per_gb": round(cpu, 3)}
            rows.append(row)
            shutil.rmtree(store.root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ram, ignore_errors=True)
    if args.json:
        print(json.dumps({"size_bytes": total, "threads": args.threads, "batch_mb": args.batch_mb,
                          "ceiling_gbps": round(ceiling, 2), "ram_tier_gbps": round(ram_rate, 2),
                          "ram_tier_cpu_s_per_gb": round(ram_cpu, 3), "ram_tier_post_copy_gbps": ram_fill,
                          "policies": rows}))
        return 0
    print(f"{total / GB:.2f} GB bf16-like region, {args.threads} thread(s), {args.batch_mb} MiB batches, "
          f"best of {args.rounds}; "
          f"ceiling {ceiling:.2f} GB/s")
    print(f"RAM tier: {ram_rate:.2f} GB/s ({ram_rate / ceiling:.2f} of the ceiling), {ram_cpu:.3f} CPU s/GB"
          + (f"; post-copy fill {ram_fill:.2f} GB/s ({ram_fill / ceiling:.2f})" if ram_fill else ""))
    print("store_raw_below  stored/raw  hot GB/s  of ceiling  CPU s/GB"
          + ("  post-copy GB/s  of ceiling  CPU s/GB" if args.post_copy else ""))
    for row in rows:
        print(f"{row['raw_below']:>14g}%  {row['stored_ratio']:>10.3f}  {row['hot_gbps']:>8.2f}  "
              f"{row['hot_gbps'] / ceiling:>10.2f}  {row['hot_cpu_s_per_gb']:>8.3f}"
              + (f"  {row['post_copy_gbps']:>14.2f}  {row['post_copy_gbps'] / ceiling:>10.2f}  "
                 f"{row['post_copy_cpu_s_per_gb']:>8.3f}" if args.post_copy else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
