"""Shared by the benchmarks: phase clocks, criu CLI runs, reaping; the private snapd
daemon is the tests' own (tests/harness.py), imported from here."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snapd.v1 import snapd_pb2 as pb
from snapd_daemon.util.fsutil import fsync_path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from harness import Daemon as Daemon  # noqa: E402  (one daemon harness for tests and benchmarks)
from harness import DaemonFailed as DaemonFailed  # noqa: E402
from harness import wait_for  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
GB = 1e9
PHASE_NAMES = {v.number: v.name.removeprefix("PHASE_").lower().replace("_", "-") for v in pb.Phase.DESCRIPTOR.values}


class BenchError(Exception):
    pass


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """The harness's wait, failing with a BenchError."""
    wait_for(cond, timeout, what, error=BenchError, interval=0.01)


def become_subreaper() -> None:
    """Orphaned restored workloads are reparented to us, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def locate_criu() -> str:
    out = subprocess.run([str(REPO / "scripts" / "install-criu.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def image_bytes(images: Path) -> int:
    return sum(p.stat().st_size for p in images.iterdir() if p.is_file() and p.suffix != ".log")


class PhaseClock:
    """Client-side phase timings: a phase lasts from its first progress event to the next phase's."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[tuple[str, float]] = []
        self.totals: dict[str, int] = {}

    def __call__(self, progress: pb.Progress) -> None:
        name = PHASE_NAMES.get(progress.phase, "?")
        if not self.marks or self.marks[-1][0] != name:
            self.marks.append((name, time.monotonic()))
        self.totals[name] = max(self.totals.get(name, 0), progress.bytes_total)

    def durations(self, ended: float) -> dict[str, float]:
        ends = [t for _name, t in self.marks[1:]] + [ended]
        return {name: round(end - t, 3) for (name, t), end in zip(self.marks, ends, strict=True)}


def run_criu(criu: str, args: list[str], images: Path, log_name: str) -> float:
    """Run one criu CLI command and return its wall time; a failure shows the log's errors."""
    started = time.monotonic()
    proc = subprocess.run([criu, *args, "-D", str(images), "-o", log_name],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        log = images / log_name
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln] if log.exists() else []
        raise BenchError(f"criu {args[0]} failed with status {proc.returncode}:\n{proc.stderr}\n"
                         + "\n".join(errors[-12:]))
    return elapsed


def fsync_images(images: Path) -> float:
    started = time.monotonic()
    for path in images.iterdir():
        fsync_path(path)
    return time.monotonic() - started


def reap_pid(pid: int, timeout: float = 60) -> None:
    """Wait until ``pid`` is gone and free: reaped by us (a subreaper) or by whoever is its parent."""
    def reaped() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return not os.path.exists(f"/proc/{pid}")

    wait_until(reaped, timeout, f"pid {pid} to be reaped")


def drop_caches() -> None:
    """Write back and drop the page cache, so that the next read comes from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def touch_memory(nbytes: int, threads: int = 8) -> None:
    """Write once to ``nbytes`` of fresh anonymous memory (``threads`` slices at once, the GIL
    released in memset), then free it. On a virtual machine whose memory the hypervisor
    backs at first touch (the GPU test host is a Firecracker guest), whichever flow runs
    first would otherwise pay for backing the memory it takes; after this, all run on
    memory that is already backed."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    if nbytes < threads * mmap.PAGESIZE:
        return
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    step = -(-nbytes // threads) // mmap.PAGESIZE * mmap.PAGESIZE
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda start: ctypes.memset(base + start, 1, min(step, nbytes - start)),
                      range(0, nbytes, step)))
    region.close()


def run_threads(work: Callable[[], object], threads: int) -> float:
    """Seconds ``threads`` threads take to run ``work`` each, started together."""
    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - started


# run by FreshProcess(uffd=True) in the new process: a userfaultfd with the events CRIU's lazy pages
# ask for (remap, remove, unmap), the region registered in missing mode, the fd sent back (SCM_RIGHTS)
_REGISTER = """
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)  # userfaultfd, x86_64
api = (ctypes.c_uint64 * 3)(0xAA, 0x4 | 0x8 | 0x40, 0)
region = (ctypes.c_uint64 * 4)(base, len(m), 1, 0)
if fd < 0 or libc.ioctl(fd, 0xC018AA3F, api) or libc.ioctl(fd, 0xC020AA00, region):
    sys.exit(os.strerror(ctypes.get_errno()))
socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b"u"], [fd])
"""


class FreshProcess:
    """A new process holding ``total`` bytes of fresh private anonymous memory at ``base``,
    as a restored process holds the regions snapd writes; killed on exit. With ``uffd``,
    the region is registered with a userfaultfd, as CRIU's lazy pages register it for a
    post-copy restore, whose fd is ``self.uffd`` (closed on exit)."""

    def __init__(self, total: int, uffd: bool = False) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        code = ("import ctypes, mmap, os, socket, sys; m = mmap.mmap(-1, int(sys.argv[1]), mmap.MAP_PRIVATE); "
                "base = ctypes.addressof(ctypes.c_char.from_buffer(m))\n" + (_REGISTER if uffd else "")
                + "print(base, flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(total), str(theirs.fileno())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     pass_fds=[theirs.fileno()])
        theirs.close()
        self.pid = self.proc.pid
        self.uffd = socket.recv_fds(ours, 1, 1)[1][0] if uffd else -1
        ours.close()
        self.base = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    def __enter__(self) -> FreshProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.uffd >= 0:
            os.close(self.uffd)


def inject_ceiling(total: int, threads: int, piece: int = 2 << 20) -> float:
    """Bytes per second at which ``threads`` threads fill ``total`` bytes of fresh private
    anonymous memory in a new process with process_vm_writev, ``piece`` bytes a call,
    from a source already resident here: what the machine allows a restore's injection
    (no reads, no decompression, no hashes)."""
    import itertools

    from snapd_daemon.host import memwrite

    with FreshProcess(total) as child:
        source = memoryview(os.urandom(64 << 20))
        slots = len(source) // piece
        order = itertools.count()

        def fill() -> None:
            while (i := next(order)) * piece < total:
                start = (i % slots) * piece
                memwrite.write(child.pid, child.base + i * piece, source[start : start + min(piece, total - i * piece)])

        return total / run_threads(fill, threads)


def bf16_weights(count: int, chunk: int = 2 << 20, seed: int = 0) -> list[bytes]:
    """``count`` chunks of bf16 numbers drawn like model weights (normal, std 0.02): random
    mantissa bytes under a few exponents."""
    import numpy

    rng = numpy.random.default_rng(seed)
    return [((rng.standard_normal(chunk // 2, dtype=numpy.float32) * 0.02).view(numpy.uint32) >> 16)
            .astype("<u2").tobytes() for _ in range(count)]


def steal_seconds() -> float:
    """CPU time the hypervisor took from this machine's vCPUs so far, all CPUs summed
    (/proc/stat; 0 on bare metal): a checkpoint that ran while the host was busy
    shows it."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


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


def policy_sizes(log: Path) -> dict[str, float]:
    """The last "ingest.policy_sizes" line of the daemon's JSON log: the new chunks of the
    last checkpoint, stored, all raw and all compressed, in GB."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"ingest.policy_sizes"' in line:
            entry = json.loads(line)
            found = {"store_raw_below": entry["store_raw_below"],
                     **{key.replace("_bytes", "_gb"): round(entry[key] / GB, 2)
                        for key in ("stored_bytes", "all_compressed_bytes", "all_raw_bytes")}}
    if not found:
        raise BenchError(f"no ingest.policy_sizes line in the daemon's log {log}")
    return found
