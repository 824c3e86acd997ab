#!/usr/bin/env python3
"""GPU benchmark, one run on one card: the reference server (Llama-3.1-8B-shaped,
random bf16 weights) through snapd and through the stock flow (criu CLI + the CUDA
driver API by hand), printed as a table with ratios.

    sudo python3 scripts/bench/gpu.py [--preset 8b] [--kv-cache-fraction 0] [--compile] [--json OUT]

Steps, in this order, on one server process (its pid survives every restore):
  1. weights generated (untimed for the cold start), then a cold start (eager; with
     --compile also a torch.compile cold start) to ready, weights in page cache;
  2. snapd checkpoint (until durable in the store and the server stopped);
  3. snapd restore -> first answer, store in page cache ("hot");
  4. the same after dropping the page cache ("cold"); then the disk's read
     bandwidth over the snapshot's chunk files (caches dropped, 8 readers), for
     the cold goal: restore <= 1.3 x stored bytes / bandwidth + CUDA restore;
  5. `snapd prefetch` (chunks decompressed into RAM), restore -> first answer ("ram");
  6. stock: CUDA lock + checkpoint, `criu dump`, `criu restore -d`, CUDA restore +
     unlock -> first answer, hot; then again from cold page cache.
Every answer is compared with the tokens the freshly started server gave.
Results are printed as they come (stderr) and as a table at the end (stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lib import (
    GB,
    REPO,
    BenchError,
    Daemon,
    PhaseClock,
    become_subreaper,
    drop_caches,
    image_bytes,
    locate_criu,
    reap_pid,
    run_criu,
    wait_until,
)
from snapd_client import SnapdClient
from snapd_daemon.host import cuda as driver
from snapd_daemon.host.gpu import inventory

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

    def kill(self) -> None:
        if self.pid and os.path.exists(f"/proc/{self.pid}"):
            os.kill(self.pid, signal.SIGKILL)
            reap_pid(self.pid)


def snapd_restore(client: SnapdClient, server: Server, snapshot: str, expected: list[int]) -> dict[str, float]:
    clock = PhaseClock()
    started = time.monotonic()
    result = client.restore(snapshot, on_progress=clock)
    restored = time.monotonic() - started
    tokens, _ = server.ask()
    answered = time.monotonic() - started
    if tokens != expected:
        raise BenchError(f"snapd restore answered {tokens}, expected {expected}")
    return {"restored": restored, "first_answer": answered, "daemon": result.duration_seconds,
            **{f"phase:{k}": v for k, v in clock.durations(started + restored).items()}}


def stock_restore(criu: str, server: Server, images: Path, cuda_pids: list[int], expected: list[int],
                  tag: str) -> dict[str, float]:
    started = time.monotonic()
    criu_s = run_criu(criu, ["restore", "-d"], images, f"restore-{tag}.log")
    t = time.monotonic()
    for pid in cuda_pids:
        driver.restore(pid)
    for pid in cuda_pids:
        driver.unlock(pid)
    cuda_s = time.monotonic() - t
    restored = time.monotonic() - started
    tokens, _ = server.ask()
    answered = time.monotonic() - started
    if tokens != expected:
        raise BenchError(f"stock restore answered {tokens}, expected {expected}")
    return {"criu_restore": criu_s, "cuda_restore_unlock": cuda_s, "restored": restored, "first_answer": answered}


def read_bandwidth(chunks: Path, readers: int = 8) -> float:
    """Bytes per second reading every chunk file once from the disk (page cache dropped
    first), with as many readers as a restore's I/O threads would use."""
    drop_caches()
    files = [p for p in chunks.rglob("*") if p.is_file()]

    def read(path: Path) -> int:
        with open(path, "rb", buffering=0) as f:
            return sum(len(block) for block in iter(lambda: f.read(8 << 20), b""))

    started = time.monotonic()
    with ThreadPoolExecutor(readers) as pool:
        total = sum(pool.map(read, files))
    return total / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="8b")
    parser.add_argument("--weights-dir", type=Path, default=Path("/var/tmp/snapd-bench-weights"))
    parser.add_argument("--kv-cache-fraction", type=float, default=0.0)
    parser.add_argument("--compile", action="store_true", help="also measure a torch.compile cold start")
    parser.add_argument("--keep-weights", action="store_true", help="keep the generated weights (disk space)")
    parser.add_argument("--serve-option", action="append", default=[], metavar="ARG",
                        help="extra argument for snapd serve, e.g. --serve-option=--inject-huge-pages (repeatable)")
    parser.add_argument("--criu", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    become_subreaper()
    criu = args.criu or locate_criu()
    work = Path(tempfile.mkdtemp(prefix="snapd-gpu-bench-", dir="/var/tmp"))
    weights = args.weights_dir / args.preset
    flags = ["--kv-cache-fraction", str(args.kv_cache_fraction)] if args.kv_cache_fraction else []
    server = Server(work, weights, args.preset, flags)
    (work / "daemon").mkdir()
    daemon = Daemon(work / "daemon", tuple(args.serve_option), criu=criu)
    results: dict[str, object] = {"preset": args.preset, "kv_cache_fraction": args.kv_cache_fraction}

    def record(key: str, value: object) -> None:
        results[key] = value
        note(f"{key}: {value}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    try:
        record("gpu", [d.name for d in inventory()[1]])
        t = time.monotonic()
        subprocess.run([sys.executable, str(SERVER), "--weights-dir", str(weights), "--preset", args.preset,
                        "--prepare-only"], check=True, stdout=subprocess.DEVNULL)
        record("weights_prepare_s", round(time.monotonic() - t, 1))

        if args.compile:
            compiled = Server(work, weights, args.preset, [*flags, "--compile"])
            info = compiled.start("compiled")
            record("cold_start_compiled_s", info["startup_seconds"])
            compiled.kill()
        info = server.start("eager")
        record("cold_start_eager_s", info["startup_seconds"])
        expected, first_s = server.ask()
        record("first_answer_after_start_s", round(first_s, 3))
        if not args.keep_weights:
            shutil.rmtree(weights, ignore_errors=True)

        daemon.start(timeout=60)
        with SnapdClient(daemon.target) as client:
            clock = PhaseClock()
            t = time.monotonic()
            snap = client.checkpoint(server.pid, name="bench", on_progress=clock)
            ckpt = time.monotonic() - t
            record("snapd_checkpoint", {"total": round(ckpt, 2), **clock.durations(t + ckpt),
                                        "raw_gb": round(snap.raw_bytes / GB, 2),
                                        "stored_gb": round(snap.stored_bytes / GB, 2)})
            cuda_pids = list(snap.gpu.cuda_pids)
            reap_pid(server.pid)
            record("snapd_restore_hot", snapd_restore(client, server, snap.id, expected))
            server.kill()
            drop_caches()
            record("snapd_restore_cold", snapd_restore(client, server, snap.id, expected))
            server.kill()
            record("disk_read_gbps", round(read_bandwidth(daemon.state_dir / "chunks") / GB, 2))
            t = time.monotonic()
            client.prefetch(snap.id)
            record("snapd_prefetch_s", round(time.monotonic() - t, 2))
            record("snapd_restore_ram", snapd_restore(client, server, snap.id, expected))
            client.prefetch(snap.id, drop=True)

        images = work / "stock-images"
        images.mkdir()
        t = time.monotonic()
        for pid in cuda_pids:
            driver.lock(pid, 30_000)
        for pid in cuda_pids:
            driver.checkpoint(pid)
        lock_ckpt = time.monotonic() - t
        dump = run_criu(criu, ["dump", "-t", str(server.pid)], images, "dump.log")
        reap_pid(server.pid)
        record("stock_checkpoint", {"cuda_lock_checkpoint": round(lock_ckpt, 2), "criu_dump": round(dump, 2),
                                    "total": round(lock_ckpt + dump, 2),
                                    "image_gb": round(image_bytes(images) / GB, 2)})
        record("stock_restore_hot", stock_restore(criu, server, images, cuda_pids, expected, "hot"))
        server.kill()
        drop_caches()
        record("stock_restore_cold", stock_restore(criu, server, images, cuda_pids, expected, "cold"))
    finally:
        server.kill()
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str, key: str) -> str:
        x, y = results[a][key], results[b][key]  # type: ignore[index]
        return f"{x:8.2f} s | {y:8.2f} s | {x / y:5.2f}"

    print(f"\nGPU: {results['gpu']}  preset {args.preset}, kv-cache fraction {args.kv_cache_fraction}")
    print(f"cold start eager {results['cold_start_eager_s']} s"
          + (f", compiled {results['cold_start_compiled_s']} s" if args.compile else ""))
    print("operation                        |    snapd   |    stock   | snapd/stock")
    print("(stock checkpoint leaves its images unsynced; snapd's is durable, compressed, deduplicated)")
    print(f"checkpoint (to durable, stopped) | {ratio('snapd_checkpoint', 'stock_checkpoint', 'total')}")
    print(f"restore -> first answer, hot     | {ratio('snapd_restore_hot', 'stock_restore_hot', 'first_answer')}")
    print(f"restore -> first answer, cold    | {ratio('snapd_restore_cold', 'stock_restore_cold', 'first_answer')}")
    print(f"restore -> first answer, ram     | {ratio('snapd_restore_ram', 'stock_restore_hot', 'first_answer')}"
          f"   (after snapd prefetch, {results['snapd_prefetch_s']} s; stock column: hot page cache)")
    cold = results["snapd_restore_cold"]
    stored_gb = results["snapd_checkpoint"]["stored_gb"]  # type: ignore[index]
    bound = 1.3 * stored_gb / results["disk_read_gbps"] + cold.get("phase:gpu-restore", 0.0)  # type: ignore[union-attr, operator]
    print(f"cold goal: restored in {cold['restored']:.2f} s; 1.3 x {stored_gb} GB / "  # type: ignore[index]
          f"{results['disk_read_gbps']} GB/s + CUDA restore = {bound:.2f} s")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
