"""Real faults of the remote tier: corrupt and truncated objects, an S3 server killed in the
middle of a pull and of a restore, a bucket unreachable or denying access. Afterwards no
partial snapshot is visible on either side, nothing is left staged, no process is left."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from harness import Daemon, Workloads, ask, error_of, gone, snapd, wait_for
from remotelib import (
    credentials_file,
    local_chunk_temporaries,
    manifest_chunks,
    remote_args,
    two_hosts,
    whole_read_chunks,
)
from s3server import S3Server, credentials_env
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A server of this module's own, to kill or freeze (each test leaves it serving again,
    on a bucket prefix of its own)."""
    server = S3Server(tmp_path_factory.mktemp("own-s3")).start()
    yield server
    server.kill()


def _nothing_left(daemon: Daemon, client: SnapdClient) -> None:
    assert not client.list().snapshots
    assert not local_chunk_temporaries(daemon)
    assert daemon.staging_leftovers() == []
    assert not list((daemon.state_dir / "holds").glob("*"))


def test_corrupt_and_truncated_objects_are_refused_by_name(tmp_path: Path, s3: S3Server,
                                                           workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "96")
    with two_hosts(tmp_path, s3, "corrupt") as (a, b), a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        ca.push(snap.id)
        store = s3.store("corrupt")
        # a chunk the restore below reads (not one of an original pages image holding only small
        # regions, which CRIU gets from the trimmed copy: that restore would fail only if it
        # still waited for another chunk when the fetch of the corrupt one failed)
        first = min(whole_read_chunks(a, snap.id))
        second = min(manifest_chunks(a, snap.id) - {first})
        blob = bytearray(obstore.get(store, f"chunks/{first[:2]}/{first}").bytes().to_bytes())
        blob[-1] ^= 0xFF
        obstore.put(store, f"chunks/{first[:2]}/{first}", bytes(blob))
        err = error_of(lambda: cb.pull(snap.id))
        assert (err.error_class, err.exit_code) == ("RemoteObjectBad", 54), err.message
        assert f"corrupt/chunks/{first[:2]}/{first}" in err.message and "corrupt or truncated" in err.message
        _nothing_left(b, cb)

        err = error_of(lambda: cb.restore(snap.id))
        assert err.error_class == "RemoteObjectBad" and first in err.message, err.message
        assert gone(pid)
        _nothing_left(b, cb)

        obstore.put(store, f"chunks/{first[:2]}/{first}", bytes(blob[: len(blob) // 2]))
        err = error_of(lambda: cb.pull(snap.id))
        assert err.error_class == "RemoteObjectBad" and "truncated" in err.message, err.message
        obstore.delete(store, f"chunks/{second[:2]}/{second}")
        obstore.delete(store, f"chunks/{first[:2]}/{first}")
        err = error_of(lambda: cb.pull(snap.id))
        assert (err.error_class, err.exit_code) == ("RemoteMissing", 55), err.message
        assert "the remote copy is incomplete" in err.message
        _nothing_left(b, cb)
        # the host that holds it intact repairs the bucket by pushing again
        assert ca.push(snap.id).already_there
        obstore.delete(store, f"manifests/{snap.id}.json")
        assert ca.push(snap.id).uploaded_chunks == 2
        assert cb.pull(snap.id).fetched_bytes == snap.stored_bytes


def test_server_killed_mid_pull_and_mid_restore(tmp_path: Path, own_s3: S3Server, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "256")
    _, digest, _ = report.read_text().split()
    with two_hosts(tmp_path, own_s3, "killed") as (a, b), a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        ca.push(snap.id)
        for attempt in ("pull", "restore"):
            moving = threading.Event()

            def on_progress(p: pb.Progress, moving: threading.Event = moving) -> None:
                if p.phase == pb.PHASE_DOWNLOAD and p.bytes_done:
                    moving.set()

            threading.Thread(target=lambda m=moving: m.wait(60) and own_s3.kill(), daemon=True).start()
            call = cb.pull if attempt == "pull" else cb.restore
            err = error_of(lambda call=call, on_progress=on_progress: call(snap.id, on_progress=on_progress))
            assert moving.is_set(), f"the {attempt} ended before any chunk arrived: {err.message}"
            assert (err.error_class, err.exit_code) == ("RemoteUnreachable", 52), err.message
            assert own_s3.endpoint in err.message and "killed/chunks/" in err.message
            assert gone(pid)
            _nothing_left(b, cb)
            own_s3.start()
        result = cb.restore(snap.id)
        assert result.pulled_bytes == snap.stored_bytes and ask(pid, report)[1] == digest
        assert [s.id for s in cb.list().snapshots] == [snap.id] and not cb.fsck().damage


def test_cancel_ends_a_pull_and_an_on_demand_restore_while_the_server_hangs(tmp_path: Path, own_s3: S3Server,
                                                                           workloads: Workloads) -> None:
    """SIGSTOP the S3 server mid-fetch (requests hang, no error comes), then cancel: the pull, and
    then the restore, roll back without waiting for the hung requests; nothing is left; once the
    server runs again, the same restore works."""
    pid, report = workloads.start("memhold.py", "256")
    _, digest, _ = report.read_text().split()
    with two_hosts(tmp_path, own_s3, "hung") as (a, b), a.client() as ca, b.client() as cb, b.client() as canceller:
        snap = ca.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        ca.push(snap.id)
        for call in (cb.pull, cb.restore):
            moving = threading.Event()
            operation: list[str] = []

            def on_progress(p: pb.Progress, moving: threading.Event = moving, operation: list[str] = operation) -> None:
                operation.append(p.operation_id)
                if p.phase == pb.PHASE_DOWNLOAD and p.bytes_done:
                    moving.set()

            def freeze_then_cancel(moving: threading.Event = moving, operation: list[str] = operation) -> None:
                if moving.wait(60):
                    assert own_s3.proc is not None
                    os.killpg(own_s3.proc.pid, signal.SIGSTOP)
                    time.sleep(0.3)  # what was under way when it stopped is read, the rest hangs
                    canceller.cancel(operation[-1])

            threading.Thread(target=freeze_then_cancel, daemon=True).start()
            try:
                err = error_of(lambda call=call, on_progress=on_progress: call(snap.id, on_progress=on_progress))
                assert moving.is_set(), f"it ended before any chunk arrived: {err.message}"
                assert (err.error_class, err.exit_code) == ("Cancelled", 45), err.message
                assert gone(pid)
                _nothing_left(b, cb)
            finally:
                assert own_s3.proc is not None
                os.killpg(own_s3.proc.pid, signal.SIGCONT)
        cb.restore(snap.id)
        assert ask(pid, report)[1] == digest


def test_unreachable_denied_missing_and_unconfigured(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    (tmp_path / "closed").mkdir()
    closed = Daemon(tmp_path / "closed", ("--remote-endpoint", "http://127.0.0.1:9", "--remote-bucket", "b",
                                          "--remote-retries", "1", "--remote-allow-plaintext", "--remote-credentials-file",
                                          str(credentials_file(tmp_path / "credentials")))).start()
    (tmp_path / "denied").mkdir()
    denied = Daemon(tmp_path / "denied", remote_args(tmp_path, s3, "denied", secret="wrong-secret")).start()
    (tmp_path / "plain").mkdir()
    plain = Daemon(tmp_path / "plain").start()
    try:
        out = snapd(closed, "list", "--remote")
        assert out.returncode == 52 and "http://127.0.0.1:9 (bucket b) unreachable while listing" in out.stderr
        out = snapd(closed, "status")
        assert out.returncode == 1 and "[FAIL] remote" in out.stdout
        (tmp_path / "nobucket").mkdir()
        nobucket = Daemon(tmp_path / "nobucket", (*remote_args(tmp_path, s3, ""), "--remote-bucket",
                                                  "no-such-bucket")).start()
        out = snapd(nobucket, "list", "--remote")
        nobucket.close()
        assert out.returncode == 55 and "bucket no-such-bucket: the bucket itself is not there" in out.stderr
        out = snapd(denied, "pull", "some-snapshot")
        assert out.returncode == 53 and "denied" in out.stderr and "denied/manifests/some-snapshot.json" in out.stderr
        out = snapd(plain, "push", "x")
        assert out.returncode == 57 and "no remote store is configured" in out.stderr
        pid, _ = workloads.start("memhold.py", "8")
        out = snapd(plain, "checkpoint", str(pid), "--push", "--leave-running")
        assert out.returncode == 57, out.stderr
        with two_hosts(tmp_path, s3, "missing") as (_a, b):
            out = snapd(b, "pull", "no-such-snapshot")
            assert out.returncode == 55 and "snapshot 'no-such-snapshot' (as an id or a name) is not there" in \
                out.stderr and \
                "`snapd list --remote`" in out.stderr
            out = snapd(b, "restore", "no-such-snapshot")
            assert out.returncode == 55, out.stderr
    finally:
        for d in (closed, denied, plain):
            d.close()


def test_credentials_from_the_aws_environment(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
                                              workloads: Workloads) -> None:
    """No credentials file: the daemon takes the keys from AWS_* variables, as obstore's chain does."""
    for key, value in credentials_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials to fall back on
    d = Daemon(tmp_path, s3.daemon_args("env-credentials")).start()
    try:
        pid, _ = workloads.start("memhold.py", "8")
        with d.client() as c:
            snap = c.checkpoint(pid, leave_running=True)
            assert c.push(snap.id).uploaded_chunks > 0
            assert [s.id for s in c.list(remote=True).snapshots] == [snap.id]
    finally:
        d.close()


def test_bad_remote_configuration_is_refused_at_start(tmp_path: Path) -> None:
    d = Daemon(tmp_path, ("--remote-endpoint", "s3.example.com", "--remote-bucket", "b"))
    with pytest.raises(Exception, match="not an http:// or https:// URL"):
        d.start(timeout=20)
    d2 = Daemon(tmp_path, ("--remote-bucket", "b"))
    with pytest.raises(Exception, match="needs both remote_endpoint and remote_bucket"):
        d2.start(timeout=20)
