"""The remote tier against a real S3 server (SeaweedFS): two daemons on separate state
directories stand for two hosts sharing one bucket."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from harness import Workloads, ask, gone, snapd, wait_for
from remotelib import chunk_objects, local_chunk_temporaries, manifest_chunks, two_hosts
from s3server import S3Server
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClientError


def test_push_on_one_host_restore_on_the_other(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "160")
    _, digest, _ = report.read_text().split()
    with two_hosts(tmp_path, s3, "two-hosts") as (a, b), a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid, name="model")
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        phases: set[int] = set()
        pushed = ca.push("model", on_progress=lambda p: phases.add(p.phase))
        assert pb.PHASE_UPLOAD in phases
        assert (pushed.snapshot_id, pushed.already_there) == (snap.id, False)
        assert pushed.uploaded_chunks == pushed.chunks == len(manifest_chunks(a, snap.id))
        assert pushed.uploaded_bytes == sum(chunk_objects(s3, "two-hosts").values()) == snap.stored_bytes
        assert ca.push(snap.id).already_there

        listed = cb.list(remote=True)
        assert [s.id for s in listed.snapshots] == [snap.id] and listed.snapshots[0].hostname == snap.hostname
        assert not cb.list().snapshots

        phases.clear()
        result = cb.restore("model", on_progress=lambda p: phases.add(p.phase))
        assert pb.PHASE_DOWNLOAD in phases and pb.PHASE_INJECT in phases
        assert result.root_pid == pid and result.pulled_chunks == pushed.chunks
        assert result.pulled_bytes == snap.stored_bytes
        assert ask(pid, report)[1] == digest
        # the pulled copy became a local snapshot of host b, whole and verified
        assert [s.id for s in cb.list().snapshots] == [snap.id]
        assert not cb.fsck().damage and not local_chunk_temporaries(b)
        workloads.kill_all()
        wait_for(lambda: gone(pid), 10, "the restored process to die")
        again = cb.restore(snap.id)
        assert again.pulled_bytes == 0 and ask(pid, report)[1] == digest


def test_second_push_of_a_similar_snapshot_uploads_only_new_chunks(tmp_path: Path, s3: S3Server,
                                                                  workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "64")
    with two_hosts(tmp_path, s3, "dedupe") as (a, b), a.client() as ca, b.client() as cb:
        first = ca.checkpoint(pid, leave_running=True)
        assert ca.push(first.id).uploaded_bytes == first.stored_bytes
        before = chunk_objects(s3, "dedupe")
        second = ca.checkpoint(pid, leave_running=True)
        new = manifest_chunks(a, second.id) - manifest_chunks(a, first.id)
        pushed = ca.push(second.id)
        added = {cid: size for cid, size in chunk_objects(s3, "dedupe").items() if cid not in before}
        assert set(added) == new and pushed.uploaded_chunks == len(new)
        assert pushed.uploaded_bytes == sum(added.values()) < first.stored_bytes // 4
        # the other host pulls the first whole, then of the second only what it lacks
        assert cb.pull(first.id).fetched_bytes == first.stored_bytes
        pulled = cb.pull(second.id)
        assert (pulled.fetched_chunks, pulled.fetched_bytes) == (len(new), pushed.uploaded_bytes)
        assert cb.pull(second.id).already_there
        assert not cb.fsck().damage


def test_concurrent_pushes_write_each_chunk_once(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "96")
    with two_hosts(tmp_path, s3, "concurrent") as (a, b), a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid, leave_running=True)
        results: list[pb.PushResult] = []

        def push() -> None:
            with a.client() as c:
                results.append(c.push(snap.id))

        threads = [threading.Thread(target=push) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 3
        chunks = chunk_objects(s3, "concurrent")
        # conditional puts: every chunk object was written by exactly one of the pushes
        assert sum(r.uploaded_bytes for r in results) == sum(chunks.values()) == snap.stored_bytes
        assert set(chunks) == manifest_chunks(a, snap.id)
        assert [s.id for s in cb.list(remote=True).snapshots] == [snap.id]
        assert cb.pull(snap.id).fetched_bytes == snap.stored_bytes


def test_checkpoint_push_uploads_in_the_background(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "16")
    with two_hosts(tmp_path, s3, "background", "--push-after-checkpoint") as (a, b), \
            a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid, leave_running=True)
        assert snap.push_operation_id.startswith("op-")
        wait_for(lambda: [s.id for s in cb.list(remote=True).snapshots] == [snap.id], 60, "the background push")
        assert set(chunk_objects(s3, "background")) == manifest_chunks(a, snap.id)
        quiet = ca.checkpoint(pid, leave_running=True, push=False)
        assert not quiet.push_operation_id
        assert [s.id for s in cb.list(remote=True).snapshots] == [snap.id]


def test_cli_push_list_pull_gc(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "16")
    with two_hosts(tmp_path, s3, "cli") as (a, b), a.client() as ca:
        snap = ca.checkpoint(pid, name="cli", leave_running=True)
        out = snapd(a, "push", "cli")
        assert out.returncode == 0 and f"pushed {snap.id}" in out.stdout, out.stderr
        listed = snapd(b, "--json", "list", "--remote")
        assert listed.returncode == 0 and [s["id"] for s in json.loads(listed.stdout)["snapshots"]] == [snap.id]
        out = snapd(b, "list", "--remote")
        assert snap.id in out.stdout and "1 remote snapshot(s)" in out.stdout
        out = snapd(b, "pull", "cli")
        assert out.returncode == 0 and f"pulled {snap.id}" in out.stdout, out.stderr
        out = snapd(b, "gc", "--remote", "--dry-run")
        assert out.returncode == 0 and "1 snapshot(s) kept; would remove 0 unreferenced chunk(s)" in out.stdout
        with b.client() as cb:
            status = cb.status()
        assert status.remote == f"{s3.endpoint} bucket snapd-test prefix cli"
        assert [(c.ok, c.detail) for c in status.checks if c.name == "remote"] == [(True, f"{status.remote}: 1 "
                                                                                    "snapshot(s); objects written "
                                                                                    "unencrypted (remote_allow_plaintext)")]


def test_remote_gc_removes_only_unreferenced_chunks_and_waits_for_no_push(
        tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    """gc racing a push: while a push runs, gc refuses (RemoteBusy); after it, gc removes the
    orphans a cancelled push left and nothing any snapshot uses."""
    pid, _ = workloads.start("memhold.py", "16")  # a snapshot gc must keep: its size proves nothing
    with two_hosts(tmp_path, s3, "gc-race") as (a, b), a.client() as ca, b.client() as cb:
        kept = ca.checkpoint(pid, leave_running=True)
        ca.push(kept.id)
        workloads.kill_all()
        pid2, _ = workloads.start("memhold.py", "192")
        racing = ca.checkpoint(pid2, leave_running=True)
        refused: list[SnapdClientError] = []
        uploading = threading.Event()

        def on_progress(p: pb.Progress) -> None:
            if p.phase == pb.PHASE_UPLOAD and p.bytes_done:
                uploading.set()

        def gc_while_pushing() -> None:
            uploading.wait(60)
            try:
                cb.gc(remote=True)
            except SnapdClientError as err:
                refused.append(err)

        gc_thread = threading.Thread(target=gc_while_pushing)
        gc_thread.start()
        pushed = ca.push(racing.id, on_progress=on_progress)
        gc_thread.join(60)
        assert pushed.uploaded_chunks > 0
        if refused:  # gc came while the push held its lock
            assert refused[0].error_class == "RemoteBusy" and refused[0].exit_code == 56, refused[0].message
            assert "a push holds lock" in refused[0].message
        live = manifest_chunks(a, kept.id) | manifest_chunks(a, racing.id)
        assert live <= set(chunk_objects(s3, "gc-race"))
        # a push cancelled half-way leaves orphan chunks only: gc reclaims them and nothing else
        workloads.kill_all()
        pid3, _ = workloads.start("memhold.py", "64")
        orphaned = ca.checkpoint(pid3, leave_running=True)
        with pytest.raises(SnapdClientError) as cancelled:
            def cancel_once_uploading(p: pb.Progress) -> None:
                if p.phase == pb.PHASE_UPLOAD and p.bytes_done:
                    ca.cancel(p.operation_id)
            ca.push(orphaned.id, on_progress=cancel_once_uploading)
        assert cancelled.value.error_class == "Cancelled"
        orphans = set(chunk_objects(s3, "gc-race")) - live
        assert orphans and orphaned.id not in {s.id for s in cb.list(remote=True).snapshots}
        report = cb.gc(remote=True)
        assert (report.remote_snapshots, report.chunks) == (2, len(orphans))
        assert set(chunk_objects(s3, "gc-race")) == live
        for sid in (kept.id, racing.id):
            assert cb.pull(sid).snapshot_id == sid
        assert cb.fsck().snapshots == 2 and not cb.fsck().damage
