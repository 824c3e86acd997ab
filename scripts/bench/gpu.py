#!/usr/bin/env python3
"""GPU benchmark, one run on one card: the reference server (Llama-3.1-8B-shaped,
random bf16 weights) through snapd and through the stock flow (criu CLI + the CUDA
driver API by hand), printed as a table with ratios.

    sudo python3 scripts/bench/gpu.py [--preset 8b] [--kv-cache-fraction 0] [--store-raw-below PERCENT]
                                      [--compare SERVE_OPTION] [--also-store-raw-below PERCENT]
                                      [--settle 0] [--keep-weights] [--compile] [--json OUT]

Steps, in this order, on one server process (its pid survives every restore):
  0. with --touch-memory, all available memory but 8 GiB is written once and freed (on a VM
     that backs guest memory at first touch, the first flow measured pays for that);
  1. weights generated (untimed for the cold start; when they were written now, the
     run waits --settle seconds, 120 by default, so that no flow pays for the host
     still absorbing 16 GB of new files), then a cold start (eager; with
     --compile also a torch.compile cold start) to ready, weights in page cache;
  2. snapd checkpoint (until durable in the store and the server stopped; each
     checkpoint, snapd's and stock's, starts after a sync); the store's size with the
     run's store_raw_below and what it would be all compressed and all raw (the
     daemon's "ingest.policy_sizes" log line);
  3. snapd restore -> first answer, store in page cache ("hot");
  4. the ceiling of injection: the same bytes written with process_vm_writev from
     memory already resident into a fresh process, as many threads as the daemon's;
     the same restore after dropping the page cache ("cold"); then the disk's read
     bandwidth over the snapshot's chunk files (caches dropped, 8 readers), for
     the cold goal: restore <= 1.05 x stored bytes / bandwidth + CUDA restore;
  5. `snapd prefetch` (chunks decompressed into RAM), restore -> first answer ("ram");
  6. each --compare SERVE_OPTION: the daemon restarted with it, the hot restore again
     (a failed one is recorded, and the server restored as before for the stock flow);
  7. stock: CUDA lock + checkpoint, `criu dump`, `criu restore -d`, CUDA restore +
     unlock -> first answer, hot; then again from cold page cache;
  8. with --also-store-raw-below PERCENT, snapd's store and the stock images removed,
     the running server is checkpointed into a fresh store with that store_raw_below
     and restored hot from it: store size against restore time in one run.
Every snapd restore first kills the server a previous restore left running (the
snapshot's pids must be free); the server runs after each restore.
Every answer is compared with the tokens the freshly started server gave; "bench_seconds"
is the whole run's time.
--hot-only leaves out the cold and RAM-tier restores, the disk bandwidth and the stock
cold restore (a run that must fit a short slot). --sleep-hooks runs vLLM's sleep-mode
recipe (docs/gpu.md) in both flows; --py-spy DIR profiles the daemon during its
checkpoint and the hot and RAM restores; --perf DIR profiles the whole machine during
both flows' checkpoints; --daemon-log keeps its log.
Results are printed as they come (stderr) and as a table at the end (stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from lib import (
    GB,
    REPO,
    BenchError,
    Daemon,
    DaemonFailed,
    PhaseClock,
    become_subreaper,
    drop_caches,
    image_bytes,
    inject_ceiling,
    locate_criu,
    policy_sizes,
    read_bandwidth,
    reap_pid,
    run_criu,
    steal_seconds,
    touch_memory,
    wait_until,
)
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.host import cuda as driver
from snapd_daemon.host.gpu import inventory
from snapd_daemon.util.meminfo import mem_available

SERVER = REPO / "scripts" / "bench" / "reference_server.py"
PROMPT = [128000, 791, 3938, 315, 17332, 374, 220, 17, 13]
NEW_TOKENS = 16


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Server:
    """The reference server; ``pid`` stays the same across checkpoints and restores."""

    def __init__(self, work: Path, weights: Path, preset: str, flags: list[str]) -> None:
        self.work, self.weights, self.preset, self.flags = work, weights, preset, flags
        self.pid = 0
        self.port = 0

    def start(self, tag: str) -> dict[str, object]:
        ready = self.work / f"ready-{tag}.json"
        # no log file: the snapshot is restored twice, and CRIU refuses to restore a
        # regular file whose size changed since the dump
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--weights-dir", str(self.weights), "--preset", self.preset,
             "--port", "0", "--ready-file", str(ready), *self.flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: ready.exists() or proc.poll() is not None, 1800, f"server {tag} to be ready")
        if not ready.exists():
            raise BenchError(f"server {tag} exited with status {proc.returncode} before it was ready")
        info = json.loads(ready.read_text())
        self.pid, self.port = proc.pid, int(info["port"])
        return info

    def ask(self) -> tuple[list[int], float]:
        started = time.monotonic()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/generate", method="POST",
            data=json.dumps({"tokens": PROMPT, "max_new_tokens": NEW_TOKENS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as resp:
            tokens = json.loads(resp.read())["tokens"]
        return tokens, time.monotonic() - started

    def running(self) -> bool:
        """The server's pid is a live process (not a zombie)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        if self.pid and os.path.exists(f"/proc/{self.pid}"):
            os.kill(self.pid, signal.SIGKILL)
            reap_pid(self.pid)


@contextlib.contextmanager
def sampling(argv: list[str]) -> Iterator[None]:
    """Run the sampling profiler ``argv`` around the block: started a second before it
    (attached before the operation starts), stopped with SIGINT after it."""
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        _, err = sampler.communicate(timeout=120)
        if sampler.returncode not in (0, -signal.SIGINT):
            note(f"{argv[0]} ended with {sampler.returncode}: {err.decode(errors='replace')[-500:]}")


@contextlib.contextmanager
def profiled(directory: Path | None, argv: list[str], report: Callable[[], None] | None = None) -> Iterator[None]:
    """The profiler ``argv`` (writing into ``directory``) around the block, then ``report``;
    nothing without a directory."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with sampling(argv):
        yield
    if report is not None:
        report()


def py_spy(directory: Path | None, pid: int, tag: str) -> contextlib.AbstractContextManager[None]:
    """py-spy sampling the daemon's threads, collapsed stacks in DIR/<tag>.txt. --nonblocking:
    sampling never pauses the daemon (paused, its 16 threads ran 10x slower)."""
    out = directory / f"{tag}.txt" if directory else Path()
    return profiled(directory, ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--threads", "--idle",
                                "--nonblocking", "--format", "raw", "--output", str(out)])


def perf(directory: Path | None, tag: str) -> contextlib.AbstractContextManager[None]:
    """perf sampling every CPU (kernel and user stacks), for what no Python profiler sees: the
    driver's work inside the checkpointed process, CRIU, page faults, reclaim. DIR/<tag>-perf.txt
    gets the time per command, then per command and symbol (cpu-clock: a virtual machine may
    have no hardware counters)."""
    data = directory / f"{tag}.perf" if directory else Path()

    def report() -> None:
        argv = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"]
        with open(data.with_name(f"{tag}-perf.txt"), "w") as out:
            for sort, limit in (("comm", "0.5"), ("comm,dso,sym", "0.2")):
                subprocess.run([*argv, "--sort", sort, "--percent-limit", limit], stdout=out,
                               stderr=subprocess.DEVNULL, check=False)
        data.unlink(missing_ok=True)

    return profiled(directory, ["perf", "record", "-a", "-g", "-e", "cpu-clock", "-F", "250", "-o", str(data)], report)


def snapd_restore(client: SnapdClient, server: Server, snapshot: str, expected: list[int],
                  hook: list[str] | None = None, timeout: float | None = None) -> dict[str, float]:
    """Restore ``snapshot`` (the server killed first, when a restore left it running) and ask
    it: the timings. The server runs after it."""
    server.kill()
    clock = PhaseClock()
    postcopy: dict[str, float] = {}

    def progress(p: pb.Progress) -> None:
        clock(p)
        if p.message.startswith("post-copy "):  # restore.postcopy's figures (docs/restore-speed.md)
            for key, _, value in (kv.partition("=") for kv in p.message.split()[1:]):
                with contextlib.suppress(ValueError):  # the numbers only ("post-copy fill" has none)
                    postcopy[key] = float(value)

    started = time.monotonic()
    result = client.restore(snapshot, on_progress=progress, post_restore_hook=hook,
                            **({"timeout": timeout} if timeout else {}))
    restored = time.monotonic() - started
    tokens, _ = server.ask()
    answered = time.monotonic() - started
    if tokens != expected:
        raise BenchError(f"snapd restore answered {tokens}, expected {expected}")
    phases = clock.durations(started + restored)
    injected = clock.totals.get("inject", 0)
    return {"restored": restored, "first_answer": answered, "daemon": result.duration_seconds,
            "inject_gb": round(injected / GB, 2),
            "inject_gbps": (postcopy.get("fill_gbps", 0.0) if postcopy else
                            round(injected / GB / phases["inject"], 2) if phases.get("inject") else 0.0),
            **{f"phase:{k}": v for k, v in phases.items()}, **{f"postcopy:{k}": v for k, v in postcopy.items()}}


def raw_pass(work: Path, criu: str, serve: tuple[str, ...], percent: float, server: Server, expected: list[int],
             sleep: list[str] | None, wake: list[str] | None) -> dict[str, object]:
    """The running server checkpointed into a fresh store whose daemon stores raw the chunks
    that compression shrinks by less than ``percent`` %, then restored from it hot (its
    chunks just written, as for the first hot restore): the policy's disk and time, measured
    in the run. The store is removed at the end; the server runs after it."""
    root = work / f"daemon-raw-below-{percent:g}"
    root.mkdir()
    daemon = Daemon(root, (*serve, "--store-raw-below", f"{percent:g}"), criu=criu)  # the last value counts
    try:
        daemon.start(timeout=60)
        with SnapdClient(daemon.target) as client:
            os.sync()
            t = time.monotonic()
            snap = client.checkpoint(server.pid, name="bench-raw", pre_checkpoint_hook=sleep)
            ckpt = time.monotonic() - t
            reap_pid(server.pid)
            return {"store_raw_below": percent, "checkpoint": round(ckpt, 2),
                    "stored_gb": round(snap.stored_bytes / GB, 2), "sizes": policy_sizes(daemon.log),
                    "restore_hot": snapd_restore(client, server, snap.id, expected, wake)}
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)


def stock_restore(criu: str, server: Server, images: Path, cuda_pids: list[int], expected: list[int],
                  tag: str, hook: list[str] | None) -> dict[str, float]:
    started = time.monotonic()
    criu_s = run_criu(criu, ["restore", "-d"], images, f"restore-{tag}.log")
    t = time.monotonic()
    for pid in cuda_pids:
        driver.restore(pid)
    for pid in cuda_pids:
        driver.unlock(pid)
    if hook:
        subprocess.run(hook, check=True, stdout=subprocess.DEVNULL)
    cuda_s = time.monotonic() - t
    restored = time.monotonic() - started
    tokens, _ = server.ask()
    answered = time.monotonic() - started
    if tokens != expected:
        raise BenchError(f"stock restore answered {tokens}, expected {expected}")
    return {"criu_restore": criu_s, "cuda_restore_unlock": cuda_s, "restored": restored, "first_answer": answered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="8b")
    parser.add_argument("--weights-dir", type=Path, default=Path("/var/tmp/snapd-bench-weights"))
    parser.add_argument("--kv-cache-fraction", type=float, default=0.0)
    parser.add_argument("--compile", action="store_true", help="also measure a torch.compile cold start")
    parser.add_argument("--keep-weights", action="store_true", help="keep the generated weights (disk space)")
    parser.add_argument("--serve-option", action="append", default=[], metavar="ARG",
                        help="extra argument for snapd serve, e.g. --serve-option=--inject-huge-pages (repeatable)")
    parser.add_argument("--restore-overlap", choices=["gpu", "always", "never"], default="never",
                        help="the daemon's restore_overlap for every snapd restore (gpu: post-copy, which hung on "
                        "an H100: docs/restore-speed.md)")
    parser.add_argument("--compare", action="append", default=[], metavar="SERVE_OPTION",
                        help="last, the hot restore again with the daemon restarted with this option added, e.g. "
                        "--compare=--inject-method=uffd or --compare=--restore-overlap=gpu (repeatable, in order)")
    parser.add_argument("--hot-only", action="store_true",
                        help="only the hot restores (snapd's, the --compare ones, the stock flow's): no cold or "
                             "RAM-tier restore and no disk bandwidth, for a run that must fit a short slot")
    parser.add_argument("--compare-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="deadline of each --compare restore (a hung one is recorded as failed)")
    parser.add_argument("--store-raw-below", type=float, metavar="PERCENT",
                        help="snapd serve --store-raw-below for this run (else the daemon's default): chunks whose "
                             "compression saves less than PERCENT are stored raw (docs/restore-speed.md)")
    parser.add_argument("--also-store-raw-below", type=float, metavar="PERCENT",
                        help="last, the running server checkpointed again into a fresh store with this "
                             "store_raw_below, then restored hot: store size against restore time, in one run")
    parser.add_argument("--sleep-hooks", action="store_true",
                        help="vLLM's sleep mode around checkpoints: POST /sleep?level=1 before (snapd's "
                             "pre-checkpoint hook; by hand in the stock flow), POST /wake_up after each restore")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="profile the daemon with py-spy during its checkpoint and the hot and RAM restores into DIR")
    parser.add_argument("--perf", type=Path, metavar="DIR",
                        help="profile every CPU with perf during snapd's and the stock checkpoint into DIR")
    parser.add_argument("--touch-memory", action="store_true",
                        help="write all available memory but 8 GiB once before anything runs (VM hosts)")
    parser.add_argument("--settle", type=float, default=120.0, metavar="SECONDS",
                        help="after generating the weights, wait this long before measuring (default 120): on the "
                             "H200 VM host, a checkpoint within about a minute of writing them ran 2-3 s slower in "
                             "its driver and CRIU phases, whichever flow it was")
    parser.add_argument("--criu", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--daemon-log", type=Path, help="the daemon logs here (JSON lines) as it runs")
    args = parser.parse_args()

    become_subreaper()
    criu = args.criu or locate_criu()
    work = Path(tempfile.mkdtemp(prefix="snapd-gpu-bench-", dir="/var/tmp"))
    weights = args.weights_dir / args.preset
    flags = ["--kv-cache-fraction", str(args.kv_cache_fraction)] if args.kv_cache_fraction else []
    server = Server(work, weights, args.preset, flags)
    (work / "daemon").mkdir()
    policy = ["--store-raw-below", str(args.store_raw_below)] if args.store_raw_below is not None else []
    daemon = Daemon(work / "daemon", (*args.serve_option, *policy, f"--restore-overlap={args.restore_overlap}"),
                    criu=criu)
    if args.daemon_log:  # written as it runs: a run killed in a hang keeps what the daemon said
        daemon.log = args.daemon_log
    results: dict[str, object] = {"preset": args.preset, "kv_cache_fraction": args.kv_cache_fraction,
                                  "sleep_hooks": args.sleep_hooks}
    bench_started = time.monotonic()

    def record(key: str, value: object) -> None:
        results[key] = value
        note(f"{key}: {value}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    try:
        record("gpu", [d.name for d in inventory()[1]])
        if args.touch_memory:
            t = time.monotonic()
            touched = max(0, mem_available() - (8 << 30))
            touch_memory(touched)
            record("memory_touched", {"gb": round(touched / GB, 1), "seconds": round(time.monotonic() - t, 1)})
        t = time.monotonic()
        prepared = subprocess.run([sys.executable, str(SERVER), "--weights-dir", str(weights), "--preset", args.preset,
                                   "--prepare-only"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if prepared.returncode != 0:
            raise BenchError(f"preparing the weights failed ({prepared.returncode}): {prepared.stderr[-2000:]}")
        record("weights_prepare_s", round(time.monotonic() - t, 1))
        if args.settle and '"generated": true' in prepared.stderr:
            note(f"the weights were just written: waiting {args.settle} s (--settle) before anything is measured")
            time.sleep(args.settle)

        if args.compile:
            compiled = Server(work, weights, args.preset, [*flags, "--compile"])
            info = compiled.start("compiled")
            record("cold_start_compiled_s", info["startup_seconds"])
            compiled.kill()
        info = server.start("eager")
        record("cold_start_eager_s", info["startup_seconds"])
        expected, first_s = server.ask()
        record("first_answer_after_start_s", round(first_s, 3))
        ask = [sys.executable, str(SERVER), "ask", "--port", str(server.port)]
        sleep, wake = ([*ask, "--sleep"], [*ask, "--wake-up"]) if args.sleep_hooks else (None, None)
        if not args.keep_weights:
            shutil.rmtree(weights, ignore_errors=True)

        daemon.start(timeout=60)
        with SnapdClient(daemon.target) as client:
            clock = PhaseClock()
            with py_spy(args.py_spy, daemon.proc.pid, "checkpoint"), perf(args.perf, "checkpoint-snapd"):
                os.sync()  # both checkpoints start with no writeback pending (the weights were just written)
                t, steal = time.monotonic(), steal_seconds()
                snap = client.checkpoint(server.pid, name="bench", on_progress=clock, pre_checkpoint_hook=sleep)
                ckpt, steal = time.monotonic() - t, steal_seconds() - steal
            record("snapd_checkpoint", {"total": round(ckpt, 2), **clock.durations(t + ckpt), "cpu_steal_s": round(steal, 2),
                                        "raw_gb": round(snap.raw_bytes / GB, 2),
                                        "stored_gb": round(snap.stored_bytes / GB, 2)})
            record("store_policy", policy_sizes(daemon.log))
            cuda_pids = list(snap.gpu.cuda_pids)
            reap_pid(server.pid)
            with py_spy(args.py_spy, daemon.proc.pid, "restore-hot"):
                record("snapd_restore_hot", snapd_restore(client, server, snap.id, expected, wake))
            server.kill()

            injected = int(results["snapd_restore_hot"]["inject_gb"] * GB)  # type: ignore[index]
            if injected:
                record("inject_ceiling_gbps", round(inject_ceiling(injected, min(16, os.cpu_count() or 1)) / GB, 2))
            if not args.hot_only:
                drop_caches()
                record("snapd_restore_cold", snapd_restore(client, server, snap.id, expected, wake))
                server.kill()
                record("disk_read_gbps", round(read_bandwidth(daemon.state_dir / "chunks") / GB, 2))
                t = time.monotonic()
                client.prefetch(snap.id)
                record("snapd_prefetch_s", round(time.monotonic() - t, 2))
                with py_spy(args.py_spy, daemon.proc.pid, "restore-ram"):
                    record("snapd_restore_ram", snapd_restore(client, server, snap.id, expected, wake))
                client.prefetch(snap.id, drop=True)
        base, compared = daemon.extra_args, []
        for option in args.compare:  # the hot restore again, each with one more option
            daemon.stop()
            daemon.extra_args = (*base, option)
            daemon.start(timeout=60)
            with SnapdClient(daemon.target) as client:
                try:  # a compared path that fails or hangs is recorded; the stock flow is still measured
                    compared.append({"serve_option": option,
                                     **snapd_restore(client, server, snap.id, expected, wake, args.compare_timeout)})
                except (SnapdClientError, BenchError) as e:
                    compared.append({"serve_option": option, "error": f"{type(e).__name__}: {e}"})
            record("snapd_restore_hot_with", compared)
        if not server.running():  # the stock flow checkpoints the running server (untimed restore)
            if daemon.extra_args != base:
                daemon.stop()
                daemon.extra_args = base
                daemon.start(timeout=60)
            with SnapdClient(daemon.target) as client:
                snapd_restore(client, server, snap.id, expected, wake)

        images = work / "stock-images"
        images.mkdir()
        with perf(args.perf, "checkpoint-stock"):
            os.sync()
            t, steal = time.monotonic(), steal_seconds()
            if sleep:
                subprocess.run(sleep, check=True, stdout=subprocess.DEVNULL)
            for pid in cuda_pids:
                driver.lock(pid, 30_000)
            for pid in cuda_pids:
                driver.checkpoint(pid)
            lock_ckpt = time.monotonic() - t
            dump = run_criu(criu, ["dump", "-t", str(server.pid)], images, "dump.log")
            steal = steal_seconds() - steal
        reap_pid(server.pid)
        record("stock_checkpoint", {"cuda_lock_checkpoint": round(lock_ckpt, 2), "criu_dump": round(dump, 2),
                                    "cpu_steal_s": round(steal, 2),
                                    "total": round(lock_ckpt + dump, 2),
                                    "image_gb": round(image_bytes(images) / GB, 2)})
        record("stock_restore_hot", stock_restore(criu, server, images, cuda_pids, expected, "hot", wake))
        if not args.hot_only:
            server.kill()
            drop_caches()
            record("stock_restore_cold", stock_restore(criu, server, images, cuda_pids, expected, "cold", wake))
        if args.also_store_raw_below is not None:  # last: the server runs, and what it needs is on disk
            daemon.close()
            shutil.rmtree(daemon.state_dir, ignore_errors=True)
            shutil.rmtree(images, ignore_errors=True)
            try:
                record("snapd_raw_pass", raw_pass(work, criu, base, args.also_store_raw_below, server, expected,
                                                  sleep, wake))
            except (SnapdClientError, BenchError, DaemonFailed) as e:  # the table still prints
                record("snapd_raw_pass", {"store_raw_below": args.also_store_raw_below,
                                          "error": f"{type(e).__name__}: {e}"})
        record("bench_seconds", round(time.monotonic() - bench_started, 1))
    finally:
        server.kill()
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str, key: str) -> str:
        x, y = results[a][key], results[b][key]  # type: ignore[index]
        return f"{x:8.2f} s | {y:8.2f} s | {x / y:5.2f}"

    print(f"\nGPU: {results['gpu']}  preset {args.preset}, kv-cache fraction {args.kv_cache_fraction}"
          + (", sleep-mode hooks" if args.sleep_hooks else ""))
    print(f"cold start eager {results['cold_start_eager_s']} s"
          + (f", compiled {results['cold_start_compiled_s']} s" if args.compile else ""))
    print("operation                        |    snapd   |    stock   | snapd/stock")
    print("(stock checkpoint leaves its images unsynced; snapd's is durable, compressed, deduplicated)")
    print(f"checkpoint (to durable, stopped) | {ratio('snapd_checkpoint', 'stock_checkpoint', 'total')}")
    print(f"restore -> first answer, hot     | {ratio('snapd_restore_hot', 'stock_restore_hot', 'first_answer')}")
    tiers = ("hot",) if args.hot_only else ("hot", "ram", "cold")
    if not args.hot_only:
        print(f"restore -> first answer, cold    | {ratio('snapd_restore_cold', 'stock_restore_cold', 'first_answer')}")
        print(f"restore -> first answer, ram     | {ratio('snapd_restore_ram', 'stock_restore_hot', 'first_answer')}"
              f"   (after snapd prefetch, {results['snapd_prefetch_s']} s; stock column: hot page cache)")
        cold = results["snapd_restore_cold"]
        stored_gb = results["snapd_checkpoint"]["stored_gb"]  # type: ignore[index]
        bound = 1.05 * stored_gb / results["disk_read_gbps"] + cold.get("phase:gpu-restore", 0.0)  # type: ignore[union-attr, operator]
        print(f"cold goal: restored in {cold['restored']:.2f} s; 1.05 x {stored_gb} GB / "  # type: ignore[index]
              f"{results['disk_read_gbps']} GB/s + CUDA restore = {bound:.2f} s")
    store = results["store_policy"]
    print(f"store: {store['stored_gb']} GB stored with store_raw_below={store['store_raw_below']:g}, "  # type: ignore[index]
          f"{store['all_compressed_gb']} GB all-compressed, {store['all_raw_gb']} GB all-raw "  # type: ignore[index]
          f"(image {results['snapd_checkpoint']['raw_gb']} GB; compressed sizes of chunks stored raw "  # type: ignore[index]
          "are estimated from 64 KiB samples)")
    raw = results.get("snapd_raw_pass")
    if raw and "error" in raw:  # type: ignore[operator]
        print(f"store_raw_below={raw['store_raw_below']:g} pass failed: {raw['error']}")  # type: ignore[index]
    elif raw:
        hot, again = results["snapd_restore_hot"], raw["restore_hot"]  # type: ignore[index]
        print(f"store_raw_below={raw['store_raw_below']:g} (same run, fresh store): {raw['stored_gb']} GB stored "  # type: ignore[index]
              f"against {results['snapd_checkpoint']['stored_gb']} GB; checkpoint {raw['checkpoint']:.2f} s; "  # type: ignore[index]
              f"restore -> first answer, hot {again['first_answer']:.2f} s against {hot['first_answer']:.2f} s, "  # type: ignore[index]
              f"injection {again['inject_gbps']} GB/s against {hot['inject_gbps']} GB/s")  # type: ignore[index]
    for tier in tiers:
        run = results[f"snapd_restore_{tier}"]
        phases = " / ".join(f"{name} {run[key]:.2f}" for key in run if key.startswith("phase:")  # type: ignore[union-attr]
                            for name in [key.removeprefix("phase:")])
        print(f"phases {tier:4}: {phases} / first answer {run['first_answer'] - run['restored']:.2f} s")  # type: ignore[index]
    runs = [(tier, results.get(f"snapd_restore_{tier}")) for tier in tiers if tier != "cold"]
    for run in results.get("snapd_restore_hot_with", []):  # type: ignore[union-attr]
        if "error" in run:
            print(f"restore -> first answer, hot, {run['serve_option']}: failed: {run['error']}")
            continue
        phases = " / ".join(f"{k.removeprefix('phase:')} {v:.2f}" for k, v in run.items() if k.startswith("phase:"))
        print(f"restore -> first answer, hot, {run['serve_option']}: {run['first_answer']:.2f} s ({phases})")
        runs.append((run["serve_option"], run))
    for tier, run in runs:
        if run and "postcopy:fill_seconds" in run:  # type: ignore[operator]
            pc = {k.removeprefix("postcopy:"): v for k, v in run.items() if k.startswith("postcopy:")}  # type: ignore[union-attr]
            faults = "/".join(f"{pc.get('faults_' + kind, 0):.0f}" for kind in ("data", "zero", "wake"))
            print(f"uffd fill, {tier}: {pc['fill_seconds']:.2f} s at {pc['fill_gbps']:.2f} GB/s; CUDA restore "
                  f"{pc['gpu_restore_seconds']:.2f} s, {pc['overlap_seconds']:.2f} s of it during the fill; faults "
                  f"data/zero/wake {faults}")
    ceiling = results.get("inject_ceiling_gbps")
    if ceiling:
        for tier in tiers:
            rate = results[f"snapd_restore_{tier}"]["inject_gbps"]  # type: ignore[index]
            print(f"injection {tier:4}: {rate:6.2f} GB/s of {results['snapd_restore_hot']['inject_gb']} GB; "  # type: ignore[index]
                  f"ceiling (parallel process_vm_writev from RAM) {ceiling} GB/s; ratio {rate / ceiling:4.2f}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
