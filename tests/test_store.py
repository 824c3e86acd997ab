"""The content-addressed store: dedupe, integrity, GC, pins, crash safety."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import grpc
import numpy
import pytest

import manifestlib
from harness import BackgroundCheckpoint, Daemon, Workloads, ask, gone, snapd, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.checkpoint.cutplan import GRID, GrowingCut, Piece, cut_fixed, cut_runs
from snapd_daemon.criu.images import GrowingPagemap, PageRun, read_pagemap, write_pagemap
from snapd_daemon.store import codec
from snapd_daemon.store.chunkdir import ChunkDir
from snapd_daemon.store.imports import ChunkImport
from snapd_daemon.store.local import LocalStore
from snapd_daemon.util.buffers import ReadBuffers


def test_runs_are_cut_on_the_address_grid() -> None:
    runs = [(GRID - 4096, 3 * 4096, 0), (5 * GRID, GRID, 3 * 4096)]
    assert cut_runs(runs) == [Piece(0, 4096), Piece(4096, 2 * 4096), Piece(3 * 4096, GRID)]
    # CRIU's arbitrary 1 MiB entry splits inside one mapping do not move the cuts
    split = [(0, 4096, 0), (4096, GRID - 4096, 4096), (GRID, 8192, GRID)]
    assert cut_runs(split) == [Piece(0, GRID), Piece(GRID, 8192)]
    # an entry of no pages adds nothing, wherever it lies
    assert cut_runs([(0, 0, 0)]) == [] and cut_runs([(0, 4096, 0), (40960, 0, 4096)]) == [Piece(0, 4096)]


def test_cuts_follow_the_mapping_not_the_absolute_address() -> None:
    """The same mapping at two alignments yields the same pieces; mapping edges cut."""
    for base in (0x7F0000001000, 0x7F00000FF000):
        mapping = [(base, base + 3 * GRID)]
        runs = [(base - 4096, 4096, 0), (base, 3 * GRID, 4096)]
        assert cut_runs(runs, mapping) == [Piece(0, 4096), Piece(4096, GRID), Piece(4096 + GRID, GRID),
                                           Piece(4096 + 2 * GRID, GRID)]
        # while CRIU still writes: the open last piece and bytes not yet in the file wait
        growing = GrowingCut(mapping)
        growing.add(runs)
        assert growing.settled_within(0, 4096 + 3 * GRID) == cut_runs(runs, mapping)[:-1]
        assert growing.settled_within(0, 4096 + GRID) == cut_runs(runs, mapping)[:2]
        assert growing.settled_within(2, 4096 + 3 * GRID) == cut_runs(runs, mapping)[2:-1]
    assert cut_fixed(GRID + 10) == [Piece(0, GRID), Piece(GRID, 10)]


def test_a_page_map_cut_as_it_grows_is_cut_as_the_whole_map() -> None:
    """Whatever batches the follower reads CRIU's entries in (1 MiB entries, gaps, runs
    crossing mapping edges and lying outside any mapping), its settled pieces are always
    the start of the whole map's cut, and once every run is in, they and the open piece
    are that cut."""
    rng = random.Random(7)
    base = 0x7F0000001000
    regions = [(base, base + 5 * GRID + 3 * 4096), (base + 6 * GRID, base + 9 * GRID)]
    runs, vaddr, offset = [], base - 2 * 4096, 0
    while vaddr < base + 10 * GRID:
        length = rng.choice([4096, 3 * 4096, 1 << 20, 1 << 20, GRID + 4096])
        runs.append((vaddr, length, offset))
        offset += length
        vaddr += length + rng.choice([0, 0, 0, 4096, GRID])
    whole = cut_runs(runs, regions)
    for _ in range(20):
        growing, at = GrowingCut(regions), 0
        while at < len(runs):
            batch = rng.randint(0, 4)
            growing.add(runs[at : at + batch])
            at += batch
            assert growing.settled == whole[: len(growing.settled)]
        assert growing.pieces() == whole


def test_a_growing_page_map_is_read_entry_by_entry_as_criu_writes_it(tmp_path: Path) -> None:
    """Read while CRIU writes (any byte boundary), the runs are those of the whole map."""
    runs = [(0x7F0000000000 + i * GRID, (i % 3 + 1) * 4096) for i in range(50)]
    whole_path = tmp_path / "whole" / "pagemap-42.img"
    whole_path.parent.mkdir()
    write_pagemap(whole_path, 7, runs)
    data = whole_path.read_bytes()
    growing_path = tmp_path / "pagemap-42.img"
    growing_path.write_bytes(b"")
    reader = GrowingPagemap(growing_path)
    seen: list[PageRun] = []
    for end in [*range(12), *range(12, len(data), 37), len(data)]:  # the magics, then entries, piecemeal
        growing_path.write_bytes(data[:end])
        seen += reader.read_new()
    whole = read_pagemap(whole_path)
    assert reader.pid == 42 and reader.pages_file == whole.pages_file == "pages-7.img"
    assert tuple(seen) == whole.runs and len(seen) == 50


def _import(store: LocalStore, name: str, raw: bytes) -> None:
    with store.begin_import() as imported:
        imported.add(codec.chunk_id(raw), b"".join(bytes(part) for part in codec.encode(raw)))
        imported.commit(name, {codec.chunk_id(raw)}, lambda added: b"{}")


def test_the_ingest_asks_the_store_only_what_its_listing_cannot_answer(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the store listed and nothing published since, the ingest stats only chunks the
    listing may hold, and stages only those the store lacks. Once another writer has
    published, it asks the store for every piece again, and so reuses what was published."""
    source = tmp_path / "images"
    source.mkdir()
    old, late, fresh = os.urandom(GRID), os.urandom(GRID), os.urandom(GRID)
    (source / "pages-1.img").write_bytes(old + late + fresh)
    store = LocalStore(tmp_path / "state", 2)
    _import(store, "snapshot-old", old)
    asked: list[str] = []
    staged: list[str] = []
    exists, stage = store.chunks.exists, store.chunks.stage
    monkeypatch.setattr(store.chunks, "exists", lambda cid: asked.append(cid) or exists(cid))
    monkeypatch.setattr(store.chunks, "stage", lambda cid, parts: staged.append(cid) or stage(cid, parts))
    ids = [codec.chunk_id(raw) for raw in (old, late, fresh)]
    pieces = cut_fixed(3 * GRID)

    with store.begin_ingest(source, lambda done: None) as ingest:
        assert ingest.listed.wait(10)
        chunks = ingest.complete({"pages-1.img": pieces})["pages-1.img"]
        assert asked == [ids[0]] and sorted(staged) == sorted(ids[1:])
        ingest.abort()
    asked.clear()
    staged.clear()
    with store.begin_ingest(source, lambda done: None) as ingest:
        assert ingest.listed.wait(10)
        _import(store, "snapshot-late", late)  # published after this ingest listed the store
        asked.clear()
        staged.clear()
        chunks = ingest.complete({"pages-1.img": pieces})["pages-1.img"]
        assert sorted(asked) == sorted(ids) and staged == [ids[2]]
        committed = ingest.commit("snapshot-new", set(ids), lambda committed: b"{}")
    assert [ref.id for ref in chunks] == ids
    assert committed.new_bytes == exists(ids[2])
    buffers = ReadBuffers()
    assert [bytes(store.chunks.read(cid, buffers)) for cid in ids] == [old, late, fresh]
    assert not list((tmp_path / "state" / "chunks").glob("*/*.tmp-*"))


def test_a_chunk_staged_twice_is_counted_as_the_copy_named_first(tmp_path: Path) -> None:
    """An ingest that staged a chunk another writer then published keeps the named copy,
    counts it as stored by the other, and leaves no temporary."""
    source = tmp_path / "images"
    source.mkdir()
    raw = os.urandom(GRID)
    (source / "pages-1.img").write_bytes(raw)
    store = LocalStore(tmp_path / "state", 2)
    with store.begin_ingest(source, lambda done: None) as ingest:
        chunks = ingest.complete({"pages-1.img": cut_fixed(GRID)})["pages-1.img"]
        _import(store, "snapshot-other", raw)
        named = os.stat(store.chunks.path(chunks[0].id)).st_ino
        committed = ingest.commit("snapshot-new", {chunks[0].id}, lambda committed: b"{}")
    assert os.stat(store.chunks.path(chunks[0].id)).st_ino == named
    assert committed.new_bytes == 0 and committed.stored_bytes == store.chunks.exists(chunks[0].id)
    assert not list((tmp_path / "state" / "chunks").glob("*/*.tmp-*"))


def test_early_pieces_the_final_cut_disagrees_with_are_redone(tmp_path: Path) -> None:
    """Pieces submitted early but cut otherwise than the final plan are redone: those that
    never started never run, those under way end before the commit, and the store ends
    up with the final cut's chunks only, no temporary left."""
    source = tmp_path / "images"
    source.mkdir()
    raw = os.urandom(4 * GRID)
    (source / "pages-1.img").write_bytes(raw)
    early, final = cut_fixed(4 * GRID, GRID // 2), cut_fixed(4 * GRID)
    done: list[int] = []
    store = LocalStore(tmp_path / "state", 2)
    with store.begin_ingest(source, done.append) as ingest:
        ingest.submit("pages-1.img", early[:2])
        wait_for(lambda: done and max(done) == GRID, 10, "the first two pieces stored")
        with ingest.paused():
            ingest.submit("pages-1.img", early[2:])  # two wait for the pause to end, four queue
            ingest.extend({"pages-1.img": final})
        chunks = ingest.complete({"pages-1.img": final})["pages-1.img"]
        ingest.commit("snapshot-a", {ref.id for ref in chunks}, lambda committed: b"{}")
    assert [ref.id for ref in chunks] == [codec.chunk_id(raw[p.offset : p.offset + p.length]) for p in final]
    assert not any(store.chunks.exists(codec.chunk_id(raw[p.offset : p.offset + p.length])) for p in early)
    assert all(store.chunks.exists(ref.id) for ref in chunks)
    assert not list((tmp_path / "state" / "chunks").glob("*/*.tmp-*"))


def test_a_dump_is_stored_while_criu_writes_it(daemon: Daemon, workloads: Workloads) -> None:
    """The follower reads CRIU's page map as it grows and the ingest gets settled pieces
    before the dump ends; the final plan agrees with every one of them (none redone)."""
    pid, report = workloads.start("memhold.py", "1024")
    before = ask(pid, report)[1]
    with daemon.client() as c:
        c.checkpoint(pid, leave_running=True)
    plans = [json.loads(ln) for ln in daemon.log.read_text().splitlines() if '"event": "ingest.extended"' in ln]
    assert plans[0]["redone"] == [] and plans[0]["early_bytes"] >= 128 << 20, plans[0]
    assert ask(pid, report)[1] == before


HEADER_SIZE = codec.HEADER.size


def _bf16(count: int) -> bytes:
    """``count`` bf16 numbers drawn like model weights."""
    normal = numpy.random.default_rng(3).standard_normal(count, dtype=numpy.float32) * 0.02
    return (normal.view(numpy.uint32) >> 16).astype(numpy.uint16).tobytes()


def test_chunk_files_verify_their_content() -> None:
    weights = _bf16(1 << 20)
    for raw in (bytes(1 << 20), b"snapd" * 1000, bytes(range(256)) * 4096, weights, weights[:-1]):
        cid = codec.chunk_id(raw)
        blob = b"".join(bytes(part) for part in codec.encode(raw))
        assert len(blob) <= HEADER_SIZE + len(raw)
        assert codec.decode(blob, cid) == raw
        assert codec.decode(bytearray(blob), cid, ReadBuffers()) == raw
        for at in (HEADER_SIZE, len(blob) // 2, -1):  # the frame's start, its middle, the last raw byte
            flipped = bytearray(blob)
            flipped[at] ^= 1
            with pytest.raises(codec.ChunkDecodeError):
                codec.decode(bytes(flipped), cid)
        with pytest.raises(codec.ChunkDecodeError):
            codec.decode(blob[:-4096], cid, ReadBuffers())
    assert codec.encode(b"x" * 4096)[0][4] == codec.CODEC_ZSTD
    assert codec.encode(os.urandom(1 << 20))[0][4] == codec.CODEC_RAW
    # weights: high bytes through zstd, low bytes as they are; smaller than one zstd frame
    parts = codec.encode(weights)
    assert parts[0][4] == codec.CODEC_PLANES and sum(map(len, parts[1:])) < 0.72 * len(weights)
    assert codec.encode(weights[:-1])[0][4] == codec.CODEC_ZSTD  # odd length: never planes


def test_two_imports_staging_the_same_chunk_keep_their_own_copies(tmp_path: Path) -> None:
    """Two imports (pulls, export streams) of snapshots sharing a chunk, each staging it from a
    thread of its own that has ended (thread idents are reused): one committing must not take
    the other's staged file."""
    store = LocalStore(tmp_path / "state", 2)
    raw = os.urandom(1 << 20)
    cid = codec.chunk_id(raw)
    blob = b"".join(bytes(part) for part in codec.encode(raw))

    def stage(imported: ChunkImport) -> None:
        worker = threading.Thread(target=imported.add, args=(cid, blob))
        worker.start()
        worker.join()

    with store.begin_import() as first, store.begin_import() as second:
        stage(first)
        stage(second)
        first.commit("snapshot-a", {cid}, lambda added: b"{}")
        assert codec.chunk_id(second.read(cid, ReadBuffers())) == cid
        second.commit("snapshot-b", {cid}, lambda added: b"{}")
    assert store.chunks.exists(cid) and not list((tmp_path / "state" / "chunks").glob("*/*.tmp-*"))


def test_a_paused_ingest_starts_no_piece_and_goes_on_after(tmp_path: Path) -> None:
    """While CRIU's post-dump notification runs, the ingest starts no piece (its writers would
    take the GIL from the walk of /proc the frozen tree waits for); after, it stores them all."""
    source = tmp_path / "images"
    source.mkdir()
    (source / "pages-1.img").write_bytes(os.urandom(4 * GRID))
    done: list[int] = []
    store = LocalStore(tmp_path / "state", 4)
    with store.begin_ingest(source, done.append) as ingest:
        with ingest.paused():
            ingest.submit("pages-1.img", cut_fixed(4 * GRID))
            time.sleep(0.5)
            assert not done
        chunks = ingest.complete({"pages-1.img": cut_fixed(4 * GRID)})
        assert done and max(done) == 4 * GRID and len(chunks["pages-1.img"]) == 4
        ingest.commit("snapshot-a", {ref.id for ref in chunks["pages-1.img"]}, lambda committed: b"{}")
    assert all(store.chunks.exists(ref.id) for ref in chunks["pages-1.img"])


def test_second_process_with_same_memory_adds_little(client: SnapdClient, workloads: Workloads) -> None:
    a, _ = workloads.start("sharedbuf.py", "128", "7")
    b, report_b = workloads.start("sharedbuf.py", "128", "7")
    first = client.checkpoint(a, leave_running=True)
    second = client.checkpoint(b)
    assert first.raw_bytes > 128 << 20 and second.raw_bytes > 128 << 20
    assert first.new_bytes > 128 << 20
    # the 128 MiB buffer is shared; the second adds its private bytes and small change
    assert second.new_bytes < 24 << 20, second.new_bytes
    listing = client.list()
    assert listing.store_disk_bytes < first.stored_bytes + (24 << 20)
    _, digest = report_b.read_text().split()
    wait_for(lambda: gone(b), 10, "the checkpointed process to stop")
    client.restore(second.id)
    assert ask(b, report_b)[1] == digest


def test_zero_pages_cost_nothing(client: SnapdClient, workloads: Workloads) -> None:
    pid, _ = workloads.start("sharedbuf.py", "64", "0")
    with_zeros = client.checkpoint(pid, leave_running=True)
    assert with_zeros.stored_bytes < with_zeros.raw_bytes


def _chunk_ids(daemon: Daemon, snap: pb.Snapshot) -> list[str]:
    """The full-size chunks of the snapshot's pages, in file order."""
    pages = next(f for f in snap.files if f.name.startswith("pages-"))
    manifest = (daemon.state_dir / "manifests" / f"{snap.id}.json").read_text()
    entry = next(f for f in json.loads(manifest)["files"] if f["name"] == pages.name)
    return [c["id"] for c in entry["chunks"] if c["id"] and c["length"] == GRID]


def _corrupt_one_chunk(daemon: Daemon, snap: pb.Snapshot) -> str:
    """Flip a byte of a chunk from the middle of the pages: the workload's buffer, the same in
    every checkpoint of the running process."""
    full = _chunk_ids(daemon, snap)
    cid = full[len(full) // 2]
    path = daemon.state_dir / "chunks" / cid[:2] / cid
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return cid


def test_flipped_byte_is_reported_by_restore_and_fsck(client: SnapdClient, daemon: Daemon,
                                                      workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "16")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    assert not client.fsck().damage
    cid = _corrupt_one_chunk(daemon, snap)

    with pytest.raises(SnapdClientError) as info:
        client.restore(snap.id)
    err = info.value
    assert err.code == grpc.StatusCode.DATA_LOSS and err.error_class == "ChunkCorrupt"
    assert snap.id in err.message and cid in err.message and "corrupt" in err.message
    wait_for(lambda: gone(pid), 10, "the half-restored process to be gone")  # killed, perhaps still exiting

    report = client.fsck(snap.id)
    assert [(d.snapshot_id, d.chunk) for d in report.damage] == [(snap.id, cid)]
    wait_for(lambda: daemon.staging_leftovers() == [], 10, "staging to be removed")


def _quarantined(daemon: Daemon, cid: str) -> bool:
    """The chunk's file was moved from the store to its quarantine."""
    return ((daemon.state_dir / "quarantine" / "chunks" / cid).is_file()
            and not (daemon.state_dir / "chunks" / cid[:2] / cid).exists())


@pytest.mark.parametrize("restored", ["repaired", "new"])
def test_fsck_quarantines_and_the_next_checkpoint_stores_the_chunk_anew(
        client: SnapdClient, daemon: Daemon, workloads: Workloads, restored: str) -> None:
    """The damaged snapshot is repaired, and the new one is born whole (it does not dedupe against
    the corrupt file fsck reported); either restores."""
    pid, report = workloads.start("memhold.py", "16")
    digest = report.read_text().split()[1]
    old = client.checkpoint(pid, leave_running=True)
    cid = _corrupt_one_chunk(daemon, old)

    text = snapd(daemon, "fsck")
    assert text.returncode == 24 and old.id in text.stderr and "snapd rm" in text.stderr, text
    assert _quarantined(daemon, cid)
    as_json = snapd(daemon, "--json", "fsck")  # still damaged: the chunk is in quarantine now
    assert as_json.returncode == 24 and json.loads(as_json.stderr)["error"] == "ChunkCorrupt"
    assert [d["chunk"] for d in json.loads(as_json.stdout)["damage"]] == [cid]
    assert list(client.get(old.id).damaged_chunks) == [cid] and client.status().quarantined_chunks == 1
    assert any(old.id in line and " damaged " in line for line in snapd(daemon, "list").stdout.splitlines())
    assert cid in snapd(daemon, "inspect", old.id).stdout

    new = client.checkpoint(pid)  # the same memory
    assert cid in _chunk_ids(daemon, new) and new.new_bytes >= GRID
    assert [list(s.damaged_chunks) for s in client.list().snapshots] == [[], []]
    assert not client.fsck().damage and snapd(daemon, "fsck").returncode == 0
    client.gc()  # forgets the quarantined copy of a chunk stored anew
    assert client.status().quarantined_chunks == 0
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(old.id if restored == "repaired" else new.id)
    assert ask(pid, report)[1] == digest


def test_restore_of_a_corrupt_chunk_quarantines_it(client: SnapdClient, daemon: Daemon,
                                                   workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "16")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    cid = _corrupt_one_chunk(daemon, snap)
    with pytest.raises(SnapdClientError) as info:
        client.restore(snap.id)
    err = info.value
    assert err.error_class == "ChunkCorrupt" and err.exit_code == 24
    pages = next(f.name for f in snap.files if f.name.startswith("pages-"))
    assert snap.id in err.message and cid in err.message and f"{pages} at offset" in err.message
    assert _quarantined(daemon, cid)
    assert [list(s.damaged_chunks) for s in client.list().snapshots] == [[cid]]


def test_unparsable_manifest_is_quarantined_and_status_warns(daemon: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    with daemon.client() as c:
        kept = c.checkpoint(pid, leave_running=True)
        broken = c.checkpoint(pid, leave_running=True)
    daemon.stop()
    path = daemon.state_dir / "manifests" / f"{broken.id}.json"
    path.write_bytes(path.read_bytes()[:100])
    daemon.start()
    moved = daemon.state_dir / "quarantine" / "manifests" / path.name
    assert moved.is_file() and not path.exists()
    assert "not JSON" in moved.with_name(f"{path.name}.error").read_text()
    assert "snapshot.manifest_quarantined" in daemon.log.read_text() and str(path) in daemon.log.read_text()
    with daemon.client() as c:
        assert [s.id for s in c.list().snapshots] == [kept.id]
        status = c.status()
    assert status.quarantined_manifests == 1
    store = next(chk for chk in status.checks if chk.name == "store")
    assert not store.ok and str(moved.parent) in store.detail
    out = snapd(daemon, "status")
    assert out.returncode == 1 and "[FAIL] store" in out.stdout


def test_gc_honours_references_pins_and_retention(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    old = client.checkpoint(pid, name="svc", leave_running=True)
    ask(pid, report)
    new = client.checkpoint(pid, name="svc", leave_running=True)
    client.pin(old.id)
    assert client.get(old.id).pinned

    plan = client.gc(keep_last=1, dry_run=True)
    assert list(plan.expired_snapshots) == [] and plan.chunks == 0
    with pytest.raises(SnapdClientError) as info:
        client.delete(old.id)
    assert info.value.error_class == "SnapshotPinned"

    client.pin(old.id, False)
    plan = client.gc(keep_last=1, dry_run=True)
    assert list(plan.expired_snapshots) == [old.id] and plan.dry_run and plan.bytes > 0
    assert len(client.list().snapshots) == 2
    done = client.gc(keep_last=1)
    assert list(done.expired_snapshots) == [old.id] and done.bytes == plan.bytes
    assert [s.id for s in client.list().snapshots] == [new.id]
    assert not client.fsck().damage and client.fsck().orphan_chunks == 0
    workloads.kill_all()
    client.restore(new.id, wait_for_exit_seconds=10)
    assert ask(pid, report)[2] == "3"


def test_kill_during_ingest_leaves_nothing_and_gc_reclaims_orphans(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "1024")
    _, digest, _ = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_COMMIT)
    checkpoint.wait_for_phase()
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    checkpoint.join()
    daemon.start()
    wait_for(lambda: ask(pid, report, timeout=5)[1] == digest, 20, "the held process to be resumed")
    with daemon.client() as c:
        assert list(c.list().snapshots) == []
        check = c.fsck()
        assert not check.damage and check.orphan_chunks == 0 and c.list().store_disk_bytes == 0
    wait_for(lambda: daemon.staging_leftovers() == [], 10, "staging to be removed")
    assert not [p for p in (daemon.state_dir / "chunks").rglob("*") if ".tmp-" in p.name]

    # a crash between publishing chunks and writing the manifest leaves orphans: GC reclaims them
    daemon.stop()
    orphans = ChunkDir(daemon.state_dir / "chunks")
    raw = os.urandom(1 << 20)
    cid = codec.chunk_id(raw)
    assert orphans.publish({cid: orphans.stage(cid, codec.encode(raw))}) == {cid}
    daemon.start()
    with daemon.client() as c:
        assert c.fsck().orphan_chunks == 1
        assert c.gc().chunks == 1
        assert c.fsck().orphan_chunks == 0 and c.list().store_disk_bytes == 0


def test_gc_during_checkpoint_keeps_its_chunks(client: SnapdClient, daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "512")
    _, digest, _ = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_COMMIT)
    checkpoint.wait_for_phase()
    reclaimed = client.gc()
    checkpoint.join()
    assert reclaimed.chunks == 0 and checkpoint.snapshot is not None
    assert not client.fsck().damage
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(checkpoint.snapshot.id)
    assert ask(pid, report)[1] == digest


def test_manifest_of_another_version_keeps_its_chunks(daemon: Daemon, workloads: Workloads) -> None:
    """A manifest with a field this snapd does not know (sealed with it, as a newer snapd
    writes it) still loads; one of a newer format is quarantined, and gc keeps every chunk
    it names until an operator deals with it."""
    pid, _ = workloads.start("memhold.py", "8")
    with daemon.client() as c:
        extended = c.checkpoint(pid, leave_running=True)
        newer = c.checkpoint(pid, leave_running=True)
    daemon.stop()

    def chunks_of(snapshot_id: str) -> set[str]:
        data = json.loads((daemon.state_dir / "manifests" / f"{snapshot_id}.json").read_text())
        return {c["id"] for f in data["files"] for c in f["chunks"] if c["id"]}

    only_newer = chunks_of(newer.id) - chunks_of(extended.id)
    assert only_newer  # its own metadata images at least
    for snap, change in ((extended, {"added_by_a_newer_snapd": 1}), (newer, {"format_version": 99})):
        path = daemon.state_dir / "manifests" / f"{snap.id}.json"
        path.write_bytes(manifestlib.reseal({**json.loads(path.read_text()), **change}))
    daemon.start()
    with daemon.client() as c:
        assert [s.id for s in c.list().snapshots] == [extended.id]
        c.gc()
    assert "format_version 99 is newer" in (daemon.state_dir / "quarantine" / "manifests" /
                                           f"{newer.id}.json.error").read_text()
    assert all((daemon.state_dir / "chunks" / cid[:2] / cid).exists() for cid in only_newer)
