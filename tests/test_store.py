"""The content-addressed store: dedupe, integrity, GC, pins, crash safety."""

from __future__ import annotations

import json
import os

import grpc
import pytest
from harness import BackgroundCheckpoint, Daemon, Workloads, ask, gone, wait_for

from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.store import codec
from snapd_daemon.store.chunkdir import ChunkDir
from snapd_daemon.checkpoint.cutplan import GRID, Piece, cut_fixed, cut_runs, settled_pieces


def test_runs_are_cut_on_the_address_grid() -> None:
    runs = [(GRID - 4096, 3 * 4096, 0), (5 * GRID, GRID, 3 * 4096)]
    assert cut_runs(runs) == [Piece(0, 4096), Piece(4096, 2 * 4096), Piece(3 * 4096, GRID)]
    # CRIU's arbitrary 1 MiB entry splits inside one mapping do not move the cuts
    split = [(0, 4096, 0), (4096, GRID - 4096, 4096), (GRID, 8192, GRID)]
    assert cut_runs(split) == [Piece(0, GRID), Piece(GRID, 8192)]


def test_cuts_follow_the_mapping_not_the_absolute_address() -> None:
    """The same mapping at two alignments yields the same pieces; mapping edges cut."""
    for base in (0x7F0000001000, 0x7F00000FF000):
        mapping = [(base, base + 3 * GRID)]
        runs = [(base - 4096, 4096, 0), (base, 3 * GRID, 4096)]
        assert cut_runs(runs, mapping) == [Piece(0, 4096), Piece(4096, GRID), Piece(4096 + GRID, GRID),
                                           Piece(4096 + 2 * GRID, GRID)]
        # while CRIU still writes: the open last piece and bytes not yet in the file wait
        assert settled_pieces(runs, 4096 + 3 * GRID, mapping) == cut_runs(runs, mapping)[:-1]
        assert settled_pieces(runs, 4096 + GRID, mapping) == cut_runs(runs, mapping)[:2]
    assert cut_fixed(GRID + 10) == [Piece(0, GRID), Piece(GRID, 10)]


def test_chunk_files_verify_their_content() -> None:
    for raw in (bytes(1 << 20), b"snapd" * 1000, bytes(range(256)) * 4096):
        cid = codec.chunk_id(raw)
        header, payload = codec.encode(raw)
        blob = header + bytes(payload)
        assert codec.decode(blob, cid) == raw
        flipped = bytearray(blob)
        flipped[-1] ^= 1
        with pytest.raises(codec.ChunkDecodeError):
            codec.decode(bytes(flipped), cid)
    assert codec.encode(b"x" * 4096)[0][4] == codec.CODEC_ZSTD
    assert codec.encode(os.urandom(1 << 20))[0][4] == codec.CODEC_RAW


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


def _corrupt_one_chunk(daemon: Daemon, snap: pb.Snapshot) -> str:
    pages = next(f for f in snap.files if f.name.startswith("pages-"))
    manifest = (daemon.state_dir / "manifests" / f"{snap.id}.json").read_text()
    entry = next(f for f in json.loads(manifest)["files"] if f["name"] == pages.name)
    cid = next(c["id"] for c in entry["chunks"] if c["id"])
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
    assert gone(pid)

    report = client.fsck(snap.id)
    assert [(d.snapshot_id, d.chunk) for d in report.damage] == [(snap.id, cid)]
    wait_for(lambda: daemon.staging_leftovers() == [], 10, "staging to be removed")


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
    pid, report = workloads.start("memhold.py", "768")
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
    header, payload = codec.encode(raw)
    cid = codec.chunk_id(raw)
    assert orphans.publish({cid: orphans.stage(cid, header, payload)}) == {cid}
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
