"""Fast restore: big regions cut from CRIU's image and written by snapd (real CRIU)."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import mmap
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness import Daemon, Workloads, ask, gone, wait_for
from snapd_client import SnapdClientError
from snapd_daemon.criu.trim import InjectSpan, Span, TrimmedLayout, split_runs
from snapd_daemon.host import filepages
from snapd_daemon.restore.delivery import Readahead, Route, Target
from snapd_daemon.runtime import Settings
from snapd_daemon.snapshots.manifest import ImageEntry, Manifest
from snapd_daemon.store import codec
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef


@pytest.fixture
def eager(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that injects every private anonymous region of 1 MiB or more:
    thread stacks, heaps and inherited regions go through the fast path too."""
    d = Daemon(tmp_path / "eager", ("--inject-min-mb", "1"))
    d.root.mkdir()
    d.start()
    yield d
    d.stop()


def _log_events(daemon: Daemon, event: str) -> list[dict[str, object]]:
    lines = daemon.log.read_text().splitlines()
    return [json.loads(ln) for ln in lines if f'"event": "{event}"' in ln]


def test_runs_split_at_region_edges() -> None:
    runs = [(0x1000, 0x5000, 0), (0x10000, 0x2000, 0x5000)]
    keep, inject = split_runs(runs, [(0x2000, 0x4000), (0x11000, 0x20000)])
    assert keep == [Span(0x1000, 0, 0x1000), Span(0x4000, 0x3000, 0x2000), Span(0x10000, 0x5000, 0x1000)]
    assert inject == [Span(0x2000, 0x1000, 0x2000), Span(0x11000, 0x6000, 0x1000)]


def test_every_kind_of_region_comes_back_with_the_cut_stored_or_made_anew(eager: Daemon,
                                                                          workloads: Workloads) -> None:
    """The checkpoint stores trimmed pages images, page maps and the injection layout;
    a restore with the same threshold uses them, one with another cuts the originals."""
    pid, report = workloads.start("regions.py")
    before = ask(pid, report)
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    # a restart reads the manifest back through its seal and consistency checks, which must
    # take a span the cut joined across two regions that touch ("touching")
    eager.stop()
    eager.start()
    with eager.client() as c:
        c.restore(snap.id)
    assert ask(pid, report) == before
    prepared = _log_events(eager, "restore.prepared")[-1]
    assert prepared["inject_bytes"] >= 96 << 20  # type: ignore[operator]
    assert _log_events(eager, "restore.prepare_steps")[-1]["cut"] == "stored"
    manifest = json.loads((eager.state_dir / "manifests" / f"{snap.id}.json").read_text())
    trimmed = [f for f in manifest["files"] if f["name"].startswith("trimmed/")]
    assert {f["name"].removeprefix("trimmed/").split("-")[0] for f in trimmed} == {"pages", "pagemap"}
    assert manifest["trimmed"]["min_region"] == 1 << 20 and manifest["trimmed"]["inject"]
    originals = [f for f in manifest["files"] if not f["name"].startswith("trimmed/")]
    assert snap.raw_bytes == sum(f["size_bytes"] for f in originals)  # the CRIU images' bytes
    kept = sum(f["size_bytes"] for f in trimmed if f["name"].startswith("trimmed/pages-"))
    assert 0 < kept < sum(f["size_bytes"] for f in originals if f["name"].startswith("pages-"))
    assert prepared["criu_bytes"] == kept  # what CRIU got: the trimmed pages files, not the originals
    # a trimmed pages file is read as a few 2 MiB chunks, not one per small mapping
    assert all(len(f["chunks"]) == -(-f["size_bytes"] // (2 << 20)) for f in trimmed)

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), 10, "the restored process to end")
    eager.stop()
    other = Daemon(eager.root, ("--inject-min-mb", "4"))
    other.start()
    try:
        with other.client() as c:
            c.restore(snap.id)
        assert ask(pid, report) == before
        steps = _log_events(other, "restore.prepare_steps")[-1]
        assert steps["cut"] == "made here" and steps["kept_bytes"] > kept
        assert "for regions of 1048576 bytes" in _log_events(other, "restore.stored_cut_unused")[-1]["reason"]
    finally:
        other.stop()


def test_restore_from_chunks_not_in_the_page_cache(eager: Daemon, workloads: Workloads) -> None:
    """Cold chunks: the delivery runs its readahead ahead of the writers; the memory still
    comes back exact."""
    pid, report = workloads.start("memhold.py", "64")
    digest = report.read_text().split()[1]
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        for chunk in (eager.state_dir / "chunks").rglob("*"):
            if chunk.is_file():  # durable already (the checkpoint's syncfs): the cached pages can go
                fd = os.open(chunk, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        c.restore(snap.id)
    assert ask(pid, report)[1] == digest
    # the injection's readahead began before CRIU restored the tree, and the injection used it
    events = [json.loads(ln) for ln in eager.log.read_text().splitlines() if ln.startswith("{")]
    names = [e["event"] for e in events]
    prepared = names.index("restore.prepared")
    early = [i for i, e in enumerate(events) if e["event"] == "delivery.readahead" and e["early_bytes"]]
    assert early and prepared < early[0] < names.index("restore.done")
    assert not [e for e in events[prepared:] if e["event"] == "delivery.readahead" and not e["early_bytes"]]


def _cached(path: Path) -> bool:
    """Whether the first page of ``path`` is in the page cache: mincore on a mapping of it
    (a read with RWF_NOWAIT would answer too, but it starts the read it says is missing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer(1)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE, access=mmap.ACCESS_COPY) as m:
        first = ctypes.c_char.from_buffer(m)  # the mapping's address; no page is touched
        try:
            if libc.mincore(ctypes.addressof(first), mmap.PAGESIZE, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path}")
        finally:
            del first
    return bool(vec.raw[0] & 1)


def test_a_readahead_started_early_reads_its_first_bytes_then_follows_the_delivery(tmp_path: Path) -> None:
    """Before the delivery counts anything, a readahead issues ``early`` bytes of chunks and
    no more; once it follows a count, it stays ``window`` bytes ahead of it."""
    store = LocalStore(tmp_path / "state", 2)
    store.recover()
    chunk = 256 << 10
    routes = []
    for i in range(8):
        raw = os.urandom(chunk)
        cid = codec.chunk_id(raw)
        path = store.chunks.path(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        routes.append(Route(ChunkRef(cid, chunk), "pages-1.img", i * chunk, [Target(0, chunk, 0)]))
    os.sync()
    paths = [store.chunks.path(r.ref.id) for r in routes]
    for path in paths:  # written back: dropping the cached pages leaves them on the disk only
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if any(_cached(p) for p in paths):
        pytest.skip(f"{tmp_path} keeps dropped pages cached (not a disk file system)")
    ahead = Readahead(store, routes, window=4 * chunk, early=3 * chunk)
    ahead.start()
    try:
        wait_for(lambda: all(_cached(p) for p in paths[:3]), 10, "the first three chunks to be read")
        ahead.stop()  # what it issued is all it will ever issue
        assert not any(_cached(p) for p in paths[3:])
    finally:
        ahead.stop()
    delivered = 2 * chunk
    ahead = Readahead(store, routes, window=4 * chunk, early=0)
    ahead.follow(lambda: delivered)
    ahead.start()
    try:
        wait_for(lambda: all(_cached(p) for p in paths[:6]), 10, "chunks up to 4 ahead of 2 delivered to be read")
        ahead.stop()
        assert not any(_cached(p) for p in paths[6:])
    finally:
        ahead.stop()


def test_threads_and_forked_children_through_the_fast_path(eager: Daemon, workloads: Workloads) -> None:
    tpid, treport = workloads.start("threads.py", "8")
    fpid, freport = workloads.start("forker.py")
    child_report = freport.with_name(freport.name + ".child")
    wait_for(child_report.exists, 10, "the child to report")
    child = int(child_report.read_text().split()[0])
    with eager.client() as c:
        threads_snap = c.checkpoint(tpid)
        forker_snap = c.checkpoint(fpid)
        wait_for(lambda: gone(tpid) and gone(fpid) and gone(child), 10, "the sources to stop")
        c.restore(threads_snap.id)
        c.restore(forker_snap.id)
    first = [int(x) for x in ask(tpid, treport)]
    assert first[1] == 9
    wait_for(lambda: [int(x) for x in ask(tpid, treport)][2:] > first[2:], 10, "counters to advance")
    assert int(ask(child, child_report)[1]) == fpid


def test_huge_page_advice_fills_regions_in_huge_pages(tmp_path: Path, workloads: Workloads) -> None:
    d = Daemon(tmp_path / "huge", ("--inject-huge-pages",))
    d.root.mkdir()
    d.start()
    try:
        pid, report = workloads.start("memhold.py", "64")
        digest = report.read_text().split()[1]
        with d.client() as c:
            snap = c.checkpoint(pid)
            wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
            c.restore(snap.id)
        assert ask(pid, report)[1] == digest
        big = next(ln for ln in Path(f"/proc/{pid}/smaps").read_text().split("\n") if "hg" in ln and "VmFlags" in ln)
        assert "hg" in big.split()  # MADV_HUGEPAGE re-applied by CRIU from the rewritten image
    finally:
        d.stop()


def test_changed_region_between_snapshots(eager: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("regions.py")
    first_digests = ask(pid, report)
    with eager.client() as c:
        first = c.checkpoint(pid, leave_running=True)
        os.kill(pid, signal.SIGUSR2)
        wait_for(lambda: report.read_text().split()[1] != first_digests[1], 10, "the big region to change")
        second_digests = ask(pid, report)
        second = c.checkpoint(pid)
        assert second.new_bytes < second.stored_bytes  # only the rewritten part is new
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        c.restore(first.id)
        assert ask(pid, report) == first_digests
        workloads.kill_all()
        c.restore(second.id, wait_for_exit_seconds=10)
        assert ask(pid, report) == second_digests


def test_failure_during_injection_kills_the_half_restored_tree(eager: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "32")
    with eager.client() as c:
        snap = c.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    manifest = json.loads((eager.state_dir / "manifests" / f"{snap.id}.json").read_text())
    pages = next(f for f in manifest["files"] if f["name"].startswith("pages-"))
    biggest = max((c for c in pages["chunks"] if c["id"]), key=lambda c: c["length"])
    path = eager.state_dir / "chunks" / biggest["id"][:2] / biggest["id"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x5A
    path.write_bytes(bytes(data))
    with eager.client() as c, pytest.raises(SnapdClientError) as info:
        c.restore(snap.id)
    err = info.value
    assert err.code == grpc.StatusCode.DATA_LOSS and biggest["id"] in err.message
    wait_for(lambda: gone(pid), 10, "CRIU to kill the half-restored tree")


def test_prefetched_snapshot_restores_from_ram(eager: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "48")
    digest = report.read_text().split()[1]
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        added = c.prefetch(snap.id)
        assert added.bytes >= 48 << 20 and c.get(snap.id).hot
        assert c.prefetch(snap.id).bytes == 0  # already there
        # with every disk chunk damaged, the restore can only have come from RAM
        for chunk in (eager.state_dir / "chunks").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"damaged")
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest
        assert c.fsck(snap.id).damage
        dropped = c.prefetch(snap.id, drop=True)
        assert dropped.bytes == added.bytes and dropped.hot_bytes == 0 and not c.get(snap.id).hot
        workloads.kill_all()
        with pytest.raises(SnapdClientError) as info:
            c.restore(snap.id, wait_for_exit_seconds=10)
        assert info.value.error_class == "ChunkCorrupt"


def test_weights_are_stored_as_byte_planes_and_restore_from_disk_and_ram(eager: Daemon, workloads: Workloads) -> None:
    """bf16 memory is stored as byte planes (smaller than one zstd frame per chunk) and comes
    back byte for byte, decoded from the disk and from the RAM tier."""
    pid, report = workloads.start("weights.py", "48")
    digest = report.read_text().split()[1]
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        codecs = [chunk.read_bytes()[4] for chunk in (eager.state_dir / "chunks").rglob("*") if chunk.is_file()]
        assert codecs.count(2) >= 20  # 48 MiB of weights: 24 chunks of 2 MiB
        assert snap.stored_bytes < 0.8 * snap.raw_bytes
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest
        workloads.kill_all()
        wait_for(lambda: gone(pid), 10, "the restored process to end")
        c.prefetch(snap.id)
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest


def test_checkpoint_can_keep_the_snapshot_hot(eager: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "32")
    digest = report.read_text().split()[1]
    with eager.client() as c:
        snap = c.checkpoint(pid, keep_hot=True)
        assert c.get(snap.id).hot
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        for chunk in (eager.state_dir / "chunks").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"damaged")
        c.restore(snap.id)  # only possible from the RAM copies
        assert ask(pid, report)[1] == digest


def test_damaged_ram_copy_falls_back_to_disk(eager: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "16")
    digest = report.read_text().split()[1]
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        c.prefetch(snap.id)
        hot = Settings(state_dir=eager.state_dir).hot_dir()
        assert hot is not None
        for chunk in (hot / "chunks").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"\0" * chunk.stat().st_size)
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest
        c.delete(snap.id, force=True)  # its restored copy runs on
    assert not [p for p in (hot / "chunks").rglob("*") if p.is_file()]


def _resident(path: Path, first: int, pages: int) -> bool:
    """Whether pages ``first`` .. ``first + pages`` of ``path`` are in the page cache (mincore)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE) as m:
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        vec = (ctypes.c_ubyte * pages)()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        if libc.mincore(ctypes.c_void_p(base + first * mmap.PAGESIZE), pages * mmap.PAGESIZE, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return all(v & 1 for v in vec)


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_file_pages_the_tree_had_mapped_in_are_read_ahead_at_restore_and_prefetch(
        eager: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """The checkpoint records which pages of its files the tree had mapped in (copied-on-write
    ones first); a restore reads them ahead, a prefetch reads them in; untouched pages never."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(16 << 20))
    page = mmap.PAGESIZE
    pid, _report = workloads.start("mapfile.py", str(data))
    with eager.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        manifest = json.loads((eager.state_dir / "manifests" / f"{snap.id}.json").read_text())
        mine = [f for f in manifest["file_pages"] if f["path"] == str(data)]
        assert mine[0]["ranges"] == [[4 << 20, 16 * page]]  # the copied-on-write pages, first
        read = [r for f in mine[1:] for r in f["ranges"]]
        assert any(o == 0 and n >= 64 * page for o, n in read)  # then those it read (and their folios)
        assert not any(o < (4 << 20) + 16 * page and o + n > 4 << 20 for o, n in read)  # each range once
        assert not any(o < (8 << 20) + 16 * page and o + n > 8 << 20 for f in mine for o, n in f["ranges"])
        assert any(".so" in f["path"] or "python" in f["path"] for f in manifest["file_pages"])  # its libraries

        _evict(data)
        assert not _resident(data, 0, 64)
        c.restore(snap.id)
        # the restored process idles: only the read-ahead can bring its read pages back
        wait_for(lambda: _resident(data, 0, 64), 10, "the pages it had read to be read ahead")
        assert not _resident(data, 2048, 16)  # never mapped in, never read
        wait_for(lambda: _log_events(eager, "filepages.warmed"), 10, "the read-ahead to end")
        assert _log_events(eager, "filepages.warmed")[-1]["op"]
        workloads.kill_all()
        wait_for(lambda: gone(pid), 10, "the restored process to end")

        _evict(data)
        done = c.prefetch(snap.id)
        assert done.file_bytes >= 80 * page
        assert _resident(data, 0, 64) and _resident(data, 1024, 16)


def test_file_pages_of_a_process_at_a_file_offset_and_the_limit(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges are file offsets (a mapping that starts 16 pages into its file), found across
    pagemap reads of 3 entries, each once, copied-on-write first; limits cut them."""
    page = mmap.PAGESIZE
    data = tmp_path / "offset.bin"
    data.write_bytes(os.urandom(64 * page))
    _evict(data)
    monkeypatch.setattr(filepages, "_BATCH", 3)
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 32 * page, flags=mmap.MAP_PRIVATE,
                                          prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=16 * page) as m:
        m.madvise(mmap.MADV_RANDOM)  # no read-around: the pages touched are the pages mapped
        assert sum(m[i * page] for i in (0, 1, 2, 5, 30)) >= 0
        m[10 * page] = 1
        mine = [f for f in filepages.scan([os.getpid()], 1 << 30) if f.path == str(data)]
        # read pages 16-18 and 21 as one range (closer than MERGE_GAP), 46 apart; 26 copied
        assert [f.ranges for f in mine] == [((26 * page, page),), ((16 * page, 6 * page), (46 * page, page))]
        assert mine[0].id == filepages.FileId.of(data.stat())
        assert sum(f.size for f in filepages.scan([os.getpid()], 3 * page + 5)) == 3 * page + 5
    # a snapshot recorded with a higher limit is read no further than the daemon's
    cut = list(filepages.capped(mine, 3 * page))
    assert [f.ranges for f in cut] == [((26 * page, page),), ((16 * page, 2 * page),)]


def test_recorded_paths_that_are_no_longer_the_recorded_files_are_never_opened(tmp_path: Path) -> None:
    """A FIFO (whose open would block), a symbolic link, a file replaced since, a missing
    one: skipped. Reads stop at the end of the file."""
    regular, fifo, link, replaced = (tmp_path / n for n in ("lib.so", "fifo", "link.so", "replaced.so"))
    regular.write_bytes(b"x" * (64 << 10))
    replaced.write_bytes(b"y" * (64 << 10))
    os.mkfifo(fifo)
    link.symlink_to(regular)
    old = replaced.stat()
    replaced.unlink()
    replaced.write_bytes(b"z" * (64 << 10))

    def recorded(path: Path, st: os.stat_result, ranges: tuple[tuple[int, int], ...]) -> filepages.FilePages:
        return filepages.FilePages(str(path), filepages.FileId.of(st), ranges)

    files = [recorded(fifo, fifo.stat(), ((0, 4096),)), recorded(link, regular.stat(), ((0, 4096),)),
             recorded(replaced, old, ((0, 4096),)), recorded(tmp_path / "gone.so", old, ((0, 4096),)),
             recorded(regular, regular.stat(), ((4096, 8192), (60 << 10, 1 << 20)))]
    done: list[int] = []
    reader = threading.Thread(target=lambda: done.append(filepages.read_in(files, 1 << 30, 2, 30)), daemon=True)
    reader.start()
    reader.join(20)
    assert done == [8192 + (4 << 10)]
    warming = filepages.warm(files, 1 << 30)
    assert warming is not None
    warming.join(20)
    assert not warming.is_alive()
    assert filepages.warm(files, 0) is None


def test_a_manifest_serialises_every_record_it_nests() -> None:
    """The compact JSON of a manifest holds what ``asdict`` sees, field for field, and its seal,
    and reads back as the same manifest."""
    files = [ImageEntry("pages-1.img", 3 << 20, (ChunkRef("a" * 64, 2 << 20), ChunkRef(ZERO_CHUNK, 1 << 20))),
             ImageEntry("trimmed/pages-1.img", 4096, (ChunkRef("b" * 64, 4096),))]
    trimmed = TrimmedLayout(1 << 20, {7: [(1 << 30, 3 << 30)]}, [InjectSpan(7, "pages-1.img", 1 << 30, 4096, 2 << 20, True)])
    pages = filepages.FilePages("/w/model.safetensors", filepages.FileId(2049, 9, 1 << 30, 5), ((0, 1 << 20),))
    manifest = Manifest(id="s", name="n", labels={"k": "v"}, created=1.5, root_pid=7, processes=[], criu_version="4.2",
                        kernel="6.8", hostname="h", shell_job=False, leave_running=True, files=files, trimmed=trimmed,
                        file_pages=[pages], ns_pids={7: 1}, ns_ports=[8000])
    text = manifest.to_json()
    content = json.loads(text)
    assert "\n" not in text and content.pop("seal") and content == json.loads(json.dumps(dataclasses.asdict(manifest)))
    assert Manifest.from_dict(json.loads(text)) == manifest


def test_file_pages_in_a_manifest_round_trip_and_bad_entries_are_dropped() -> None:
    good = filepages.FilePages("/usr/lib/libx.so", filepages.FileId(2049, 77, 1 << 20, 10**18), ((0, 4096), (8192, 4096)))
    manifest = Manifest(id="s", name="", labels={}, created=0.0, root_pid=1, processes=[], criu_version="",
                        kernel="", hostname="", shell_job=False, leave_running=False, file_pages=[good])
    assert Manifest.from_dict(json.loads(manifest.to_json())).file_pages == [good]
    data = json.loads(manifest.to_json())
    ident = {"device": 1, "inode": 2, "size": 3, "mtime_ns": 4}
    for value in (None, "x", [{"path": "relative", "id": ident, "ranges": []}], [{"path": "/a"}],
                  [{"path": "/a\0b", "id": ident, "ranges": []}], [{"path": "/a", "id": {"inode": 2}, "ranges": []}],
                  [{"path": "/a", "id": ident, "ranges": [[-1, 5]]}]):
        data["file_pages"] = value
        assert Manifest.from_dict(data).file_pages == []
    del data["file_pages"]
    assert Manifest.from_dict(data).file_pages == []
