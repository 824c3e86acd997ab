"""The GPU-free parts of the overlap probe (scripts/bench/overlap_probe.py and
overlap_mem.py) on a plain CPU process: finding the memory that appeared,
reading it out, locating known blocks in it (placed out of order), zeroing and
refilling it in address order, page frames, and the probe's JSON when the
driver is missing. The GPU run itself is the lead's (docs/overlap-probe.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import overlap_mem as mem  # noqa: E402
import overlap_probe as probe  # noqa: E402

BLOCKS, BLOCK, CHUNK = 4, 1 << 20, 64 << 10

# A CPU stand-in for the torch child: on "alloc" it maps BLOCKS blocks in one
# private anonymous mapping (as the driver's host copy is) in reverse order; "check" answers the wrong chunks.
HOLDER = f"""
import ctypes, json, mmap, sys
sys.path.insert(0, {str(BENCH)!r})
import numpy as np
import overlap_mem as mem
blocks, block, chunk = {BLOCKS}, {BLOCK}, {CHUNK}
print(json.dumps({{"ready": True}}), flush=True)
for line in sys.stdin:
    if line.strip() == "alloc":
        m = mmap.mmap(-1, blocks * block, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        words = np.frombuffer(m, dtype=np.int64).reshape(blocks, -1)
        for i in range(blocks):
            words[blocks - 1 - i] = mem.pattern(i, 0, block // 8)
        print(json.dumps({{"address": ctypes.addressof(ctypes.c_char.from_buffer(m))}}), flush=True)
    elif line.strip() == "check":
        wrong, zero = [], 0
        for i in range(blocks):
            rows = words[blocks - 1 - i].reshape(-1, chunk // 8)
            bad = (rows != mem.pattern(i, 0, block // 8).reshape(-1, chunk // 8)).any(axis=1)
            wrong += [i * (block // chunk) + j for j in np.flatnonzero(bad).tolist()]
            zero += int((rows[bad] == 0).all(axis=1).sum())
        print(json.dumps({{"wrong": wrong, "zero": zero}}), flush=True)
    elif line.startswith("drop "):
        ranges = [tuple(map(int, part.split(":"))) for part in line.split()[1:]]
        print(json.dumps({{"error": mem.drop(ranges)}}), flush=True)
    else:
        break
"""


class Holder:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(REPO / "daemon")})
        assert self.ask(None) == {"ready": True}
        self.pid = self.proc.pid

    def ask(self, command: str | None) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.proc.kill()
    h.proc.wait()


def test_find_locate_zero_refill(holder: Holder) -> None:
    before = mem.read_regions(holder.pid)
    address = holder.ask("alloc")["address"]
    after = mem.read_regions(holder.pid)
    ranges = mem.grown_ranges(before, after, 1 << 20)
    assert any(s <= address and address + BLOCKS * BLOCK <= e for s, e in ranges), (hex(address), ranges)

    buf = mem.read_ranges(holder.pid, ranges, threads=2)
    assert len(buf) == sum(e - s for s, e in ranges)
    runs = mem.locate(buf, ranges, BLOCKS, BLOCK, CHUNK)
    # Blocks lie in reverse order: one run per block, each whole, addresses descending by block.
    assert [r.chunks[0][0] for r in runs] == list(range(BLOCKS))[::-1]
    assert all(r.length == BLOCK and len(r.chunks) == BLOCK // CHUNK for r in runs)
    assert runs[0].address == address and runs[-1].address == address + (BLOCKS - 1) * BLOCK

    mem.zero_runs(holder.pid, runs, threads=2)
    answer = holder.ask("check")
    assert len(answer["wrong"]) == answer["zero"] == BLOCKS * BLOCK // CHUNK

    refill = mem.PacedWriter(holder.pid, buf, runs, threads=2, piece=256 << 10, rate=0)
    refill.start()
    refill.join()
    assert holder.ask("check") == {"wrong": [], "zero": 0}
    assert holder.ask("drop " + " ".join(f"{r.address}:{r.length}" for r in runs[:2]))["error"] is None
    answer = holder.ask("check")  # the dropped blocks read as zeros
    assert len(answer["wrong"]) == answer["zero"] == 2 * BLOCK // CHUNK
    assert holder.ask(f"drop {address + 1}:{mem.PAGE}")["error"].endswith("Invalid argument")

    mem.zero_runs(holder.pid, runs, threads=2)
    writer = mem.PacedWriter(holder.pid, buf, runs, threads=2, piece=256 << 10, rate=40e6)
    assert writer.total == BLOCKS * BLOCK
    writer.start()
    seen = []
    while writer.watermark() < writer.total:
        seen.append(writer.watermark())
        time.sleep(0.005)
    writer.join()
    assert not writer.errors and writer.finished >= writer.started
    assert seen == sorted(seen) and len(set(seen)) > 2  # the paced watermark moves up in steps
    assert holder.ask("check") == {"wrong": [], "zero": 0}


def test_reading_an_unmapped_range_names_the_call(holder: Holder) -> None:
    with pytest.raises(OSError, match=r"process_vm_readv\(pid \d+, 0x1000, 4096 bytes\): Bad address"):
        mem.read_ranges(holder.pid, [(mem.PAGE, 2 * mem.PAGE)], threads=1)


def test_page_frames_and_idle_tracking(holder: Holder) -> None:
    address = holder.ask("alloc")["address"]
    frames = mem.pfns(holder.pid, [address, address + mem.PAGE])
    if os.geteuid() == 0:
        assert (frames != 0).all()
    reason = mem.idle_tracking_unavailable()
    if reason is not None:
        assert mem.IDLE_BITMAP in reason
        return
    tracker = mem.IdleTracker(frames)
    try:
        tracker.mark_idle()
        holder.ask("check")
        assert tracker.accessed().all()
    finally:
        tracker.close()


def test_locate_tells_chunks_with_the_same_first_word_apart() -> None:
    # With 64 MiB blocks of 64 KiB chunks, chunk 256 of block 0 and chunk 128 of block 1 start alike.
    block, per = 64 << 20, CHUNK // 8
    assert mem.pattern(0, 256 * per, 1)[0] == mem.pattern(1, 128 * per, 1)[0]
    chunks = [mem.pattern(1, 128 * per, per), mem.pattern(0, 256 * per, per)]
    buf = bytearray(b"".join(c.tobytes() for c in chunks))
    runs = mem.locate(buf, [(1 << 30, (1 << 30) + len(buf))], 2, block, CHUNK)
    assert [(r.address, r.chunks) for r in runs] == [(1 << 30, ((1, 128),)), ((1 << 30) + CHUNK, ((0, 256),))]


SMAPS = """\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 
Rss:                1024 kB
7f0000100000-7f0000300000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0000400000-7f0000500000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
Rss:                  16 kB
"""
SMAPS_AFTER = """\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 
Rss:                3072 kB
7f0000100000-7f0000300000 rw-p 00000000 00:00 0 
Rss:                2048 kB
7f0000400000-7f0000500000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
Rss:                  16 kB
7f0000600000-7f0000600800 rw-p 00000000 00:00 0 
"""


def test_smaps_diff() -> None:
    before, after = mem.parse_smaps(SMAPS), mem.parse_smaps(SMAPS_AFTER)
    assert before[0] == mem.Region(0x7F0000000000, 0x7F0000100000, "rw-p", "", 1 << 20)
    assert before[2].path == "/usr/lib/libc.so.6" and after[3].rss == 0
    # The PROT_NONE reservation made writable counts, the region whose Rss grew by 2 MiB
    # counts whole, the file mapping and the 2 KiB mapping (under the minimum) do not.
    assert mem.grown_ranges(before, after, 1 << 20) == [(0x7F0000000000, 0x7F0000100000),
                                                        (0x7F0000100000, 0x7F0000300000)]


def test_wrong_chunks_placed_in_address_order() -> None:
    # Two runs: block 1 (chunks 0-1) at the lower address, then block 0 (chunks 0-1).
    runs = [mem.Run(0x2000_0000, 2 * CHUNK, 0, ((0, 0), (0, 1))), mem.Run(0x1000_0000, 2 * CHUNK, 0, ((1, 0), (1, 1)))]
    where = mem.wrong_positions(runs, [1, 3, 9], chunks_per_block=2, bins=2)
    # chunk 3 = block 1 chunk 1 is 2nd of 4, chunk 1 = block 0 chunk 1 is 4th; 9 was not located
    assert where == {"wrong_first_at": 0.25, "wrong_last_at": 0.75, "wrong_unlocated": 1,
                     "wrong_share_by_part_of_2": [0.5, 0.5]}
    assert mem.wrong_positions(runs, [9], chunks_per_block=2, bins=2) == {}


def test_ranges_still_mapped_and_merged() -> None:
    after = mem.parse_smaps(SMAPS_AFTER)
    assert mem.still_mapped([(0x7F0000000000, 0x7F0000080000), (0x7F00000F0000, 0x7F0000110000),
                             (0x7F0000400000, 0x7F0000401000)], after) == [(0x7F0000000000, 0x7F0000080000)]
    assert mem.merge([(5, 9), (0, 2), (2, 4), (8, 12), (20, 21)]) == [(0, 4), (5, 12), (20, 21)]


def test_thread_cpu_names_this_process() -> None:
    spin = threading.Thread(target=lambda: sum(range(3_000_000)), name="spin")
    spin.start()
    spin.join()
    cpu = probe.thread_cpu(os.getpid())
    assert any(key.startswith(f"{os.getpid()}:") for key in cpu)
    assert probe.cpu_delta(cpu, cpu)["total_s"] == 0


def test_verdict_reads_the_experiments() -> None:
    assert probe.verdict({})["reads_page_tables"] is None
    assert probe.verdict({"zeroed": {"wrong_chunks": 0}, "dropped": {"wrong_chunks": 0}})["reads_page_tables"] is False
    assert probe.verdict({"zeroed": {"wrong_chunks": 9}, "dropped": {"failed": "x"}})["reads_page_tables"] is True
    pinned = probe.verdict({"zeroed": {"wrong_chunks": 9}, "dropped": {"wrong_chunks": 0}})
    assert pinned["reads_page_tables"] is False and "pinned" in pinned["meaning"]
    through = probe.verdict({"zeroed": {"wrong_chunks": 9}, "dropped": {"wrong_chunks": 9},
                             "watermark_0.0": {"fraction": 0.0, "wrong_chunks": 5},
                             "watermark_0.5": {"fraction": 0.5, "wrong_chunks": 0},
                             "paced": {"fraction": 0.0, "wrong_chunks": 7}})
    assert through["reads_page_tables"] is True and through["lowest_safe_fraction"] == 0.5
    assert through["wrong_chunks_by_experiment"] == {"watermark_0.0": 5, "watermark_0.5": 0, "paced": 7}


def test_flags_are_checked() -> None:
    with pytest.raises(SystemExit):
        probe.parse(["--chunk-kib", "3"])
    assert probe.parse(["--fractions", "0, 0.5"]).fraction_list == [0.0, 0.5]


@pytest.mark.skipif(probe.cuda.available(), reason="this host has the CUDA driver: the GPU run covers it")
def test_without_driver_the_summary_names_the_step() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "overlap_probe.py")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "daemon")}, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1
    assert lines[0]["step"] == "driver" and lines[1]["step"] == "driver" and "libcuda" in lines[1]["error"]
    summary = lines[-1]["summary"]
    assert summary["errors"][0]["step"] == "driver"
    assert summary["verdict"]["reads_page_tables"] is None
    assert summary["userfaultfd"]["kernel"] == os.uname().release
    assert set(summary) >= {"probe", "args", "experiments", "errors", "verdict", "wall_s"}
