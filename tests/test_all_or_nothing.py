"""Issue #10: a restore is all-or-nothing, and nothing the store holds is ever lost.

Black-box: the gRPC API (SnapdClient, raw channels), the `snapd` CLI, processes and
files on disk. The workload of most tests is tests/workloads/sentinel.py: seeded
memory (so a second process can produce the same chunks), a heartbeat file it
rewrites every 20 ms (a deleted heartbeat that reappears proves some copy ran), and
the digest of its memory on SIGUSR1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from faultlib import (
    BackgroundCall,
    beat_file,
    biggest_chunk,
    chunk_temporaries,
    damage_chunk,
    heartbeat,
    quarantined_chunk,
    start_sentinel,
    stopped,
)
from harness import WORKLOADS, Daemon, Workloads, ask, error_of, gone, wait_for
from harness import snapd as snapd_cli
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient

SEED = 1010


@pytest.fixture
def snapd(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that injects private anonymous regions of 8 MiB or more (the sentinel's region)."""
    d = Daemon(tmp_path / "snapd", ("--inject-min-mb", "8"))
    d.root.mkdir()
    d.start()
    yield d
    d.stop()



def _running(pid: int) -> bool:
    return not gone(pid) and not stopped(pid)


def _ran_since(beat: Path, before: str | None) -> bool:
    return heartbeat(beat) not in (None, before)


# ------------------------------------------------------------------ 1 + 3: damaged chunks

@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_restore_with_damaged_chunk_runs_nothing_and_marks_the_snapshot(snapd: Daemon, workloads: Workloads,
                                                                         how: str) -> None:
    """A restore whose injected region has a corrupt/truncated/missing chunk fails with
    ChunkCorrupt and leaves no process: the pid does not exist and the restored copy never
    ran. The chunk (when present) is in quarantine, the snapshot is marked damaged
    (API, `snapd list`, `snapd inspect`), `snapd fsck` exits 24; checkpointing the same
    content again stores the chunk anew and repairs the snapshot."""
    pid, report, digest = start_sentinel(workloads, 24, SEED)
    beat = beat_file(report)
    with snapd.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
        chunk = damage_chunk(biggest_chunk(snapd.state_dir), how)
        beat.unlink()
        err = error_of(lambda: c.restore(snap.id))
        assert err.error_class == "ChunkCorrupt" and err.exit_code == 24, err.message
        assert err.code == grpc.StatusCode.DATA_LOSS and chunk in err.message
        wait_for(lambda: gone(pid), 10, "the half-restored tree to be killed")
        assert heartbeat(beat) is None, f"the restored copy of pid {pid} ran after the failed restore: {heartbeat(beat)}"

        if how != "delete":
            assert quarantined_chunk(snapd.state_dir, chunk).exists(), "the corrupt chunk was not quarantined"
            assert not (snapd.state_dir / "chunks" / chunk[:2] / chunk).exists()
        assert chunk in list(c.get(snap.id).damaged_chunks)
        assert "damaged" in snapd_cli(snapd, "list").stdout
        assert "damaged" in snapd_cli(snapd, "inspect", snap.id).stdout
        assert snapd_cli(snapd, "fsck").returncode == 24

        # the same content checkpointed again repairs the snapshot
        pid2, _, digest2 = start_sentinel(workloads, 24, SEED)
        assert digest2 == digest
        c.checkpoint(pid2, leave_running=True)
        assert list(c.get(snap.id).damaged_chunks) == []
        assert not c.fsck(snap.id).damage
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest


def test_failed_injection_kills_the_tree_before_it_runs(snapd: Daemon, workloads: Workloads) -> None:
    """The first defect of #10 in its plainest form: a corrupt chunk of a large injected
    region; after the failed restore the original pid is not running (nor stopped), and
    no byte of its heartbeat was written."""
    pid, report, _ = start_sentinel(workloads, 40, SEED + 1)
    beat = beat_file(report)
    with snapd.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
        damage_chunk(biggest_chunk(snapd.state_dir), "flip")
        beat.unlink()
        assert error_of(lambda: c.restore(snap.id)).error_class == "ChunkCorrupt"
    wait_for(lambda: gone(pid), 10, "the half-restored tree to be killed")
    assert heartbeat(beat) is None, "the tree ran with part of its memory missing"


@pytest.mark.parametrize("read", ["fsck", "prefetch"])
def test_chunk_found_corrupt_is_quarantined_and_never_reused(snapd: Daemon, workloads: Workloads, read: str) -> None:
    """A chunk that fails its hash on a read (fsck, prefetch) is moved to
    quarantine/chunks/<id> and its snapshot marked damaged; a new checkpoint of the same
    content does not trust a file of that name: it stores the chunk anew, so the new
    snapshot restores and the old one is repaired."""
    pid, report, digest = start_sentinel(workloads, 16, SEED + 2)
    with snapd.client() as c:
        first = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
        chunk = damage_chunk(biggest_chunk(snapd.state_dir), "flip")
        if read == "fsck":
            assert [d.chunk for d in c.fsck().damage] == [chunk]
        else:
            err = error_of(lambda: c.prefetch(first.id))
            assert err.error_class == "ChunkCorrupt" and chunk in err.message

        pid2, report2, _ = start_sentinel(workloads, 16, SEED + 2)
        second = c.checkpoint(pid2)
        wait_for(lambda: gone(pid2), 10, "the second source to stop")
        c.restore(second.id)  # born damaged today: it reused the corrupt chunk
        assert ask(pid2, report2)[1] == digest

        assert quarantined_chunk(snapd.state_dir, chunk).exists()
        assert list(c.get(first.id).damaged_chunks) == []
        assert not c.fsck().damage
        c.restore(first.id)
        assert ask(pid, report)[1] == digest


@dataclass
class HeldRestore:
    """A restore of a sentinel's snapshot held inside its memory injection: the biggest
    chunk file is a FIFO nobody writes, so the read of that chunk blocks."""

    pid: int
    report: Path
    digest: str
    beat: Path
    snapshot: str
    call: BackgroundCall


@contextlib.contextmanager
def held_restore(snapd: Daemon, workloads: Workloads, seed: int) -> Iterator[HeldRestore]:
    """Checkpoint a sentinel, then restore it until it blocks in the injection; the restored
    tree exists (stopped) when this yields. Afterwards the chunk is put back, and a daemon
    still blocked on the FIFO (the test failed) is killed."""
    pid, report, digest = start_sentinel(workloads, 24, seed)
    beat = beat_file(report)
    with snapd.client() as c:
        snap = c.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
    chunk = biggest_chunk(snapd.state_dir)
    saved = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    beat.unlink()
    call = BackgroundCall(snapd.target, "restore", snap.id)
    try:
        assert call.wait_until(lambda e: e.phase == pb.PHASE_INJECT, 30), call.error
        wait_for(lambda: psutil.pid_exists(pid), 10, "the restored tree to exist")
        held = HeldRestore(pid, report, digest, beat, snap.id, call)
        yield held
        while not call.done.wait(0.05):  # let a read blocked on the FIFO go on: it finds the chunk empty
            with contextlib.suppress(OSError):  # ENXIO: no reader (the delivery stopped before this chunk)
                os.close(os.open(chunk, os.O_WRONLY | os.O_NONBLOCK))
    finally:
        if not call.done.is_set():
            assert snapd.proc is not None
            snapd.proc.kill()
            snapd.proc.wait()
            call.join()
        chunk.unlink(missing_ok=True)  # an empty read put the FIFO in quarantine
        chunk.write_bytes(saved)


def _restores_again(snapd: Daemon, held: HeldRestore) -> None:
    """The tree of the held restore is gone and never ran; the snapshot restores whole."""
    wait_for(lambda: gone(held.pid), 15, "the held restore's tree to be killed")
    assert heartbeat(held.beat) is None, "the tree of the failed restore ran"
    with snapd.client() as c:
        c.restore(held.snapshot, wait_for_exit_seconds=10)
    assert ask(held.pid, held.report)[1] == held.digest


def test_sigkill_during_injection_is_undone_at_next_start(snapd: Daemon, workloads: Workloads) -> None:
    """A daemon SIGKILLed while it writes the memory of a restored tree: at its next start
    it kills the stopped tree its journal names, counts the recovery
    (recovered_operations), the copy never ran, and the snapshot restores again (no PidsInUse)."""
    with held_restore(snapd, workloads, SEED + 5) as held:
        assert snapd.proc is not None
        snapd.proc.kill()
        snapd.proc.wait()
        held.call.join()
    snapd.start()
    with snapd.client() as c:
        assert c.status().recovered_operations >= 1
    _restores_again(snapd, held)


# ------------------------------------------------------------------ 4: controlling terminal

@pytest.mark.parametrize("shape", ["job-of-a-shell", "session-leader"])
def test_process_with_a_controlling_terminal_is_refused_before_freezing(snapd: Daemon, tmp_path: Path,
                                                                         workloads: Workloads, shape: str) -> None:
    """A process whose session has a controlling terminal held outside its tree (a job
    started from a shell on a terminal, or a session leader whose pty master another
    process holds) cannot be restored by CRIU ("Don't have tty to inherit session
    from"): refused with ProcessProtected (exit 12,
    FAILED_PRECONDITION) naming the pid and the fix (setsid), before anything is frozen:
    the process keeps running and no snapshot is listed."""
    master, slave = os.openpty()
    report = tmp_path / "tty.report"
    command = [sys.executable, str(WORKLOADS / "sentinel.py"), "8", "1", str(report)]
    if shape == "job-of-a-shell":
        command = ["sh", "-c", '"$@" & wait', "sh", *command]
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, cwd=WORKLOADS, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    threading.Thread(target=proc.wait, daemon=True).start()
    try:
        wait_for(report.exists, 60, "the terminal job to report")
        pid = int(report.read_text().split()[0])
        tty_nr = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
        assert tty_nr != 0, "the workload has no controlling terminal"
        with snapd.client() as c:
            err = error_of(lambda: c.checkpoint(pid))
            assert err.error_class == "ProcessProtected" and err.exit_code == 12, err.message
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert str(pid) in err.message and "setsid" in err.message
            outside = "its session leader is" if shape == "job-of-a-shell" else "its other end (the pty master) is held"
            assert f"that the tree does not own ({outside} outside the tree)" in err.message, err.message
            assert list(c.list().snapshots) == []
        assert _running(pid)
        before = heartbeat(beat_file(report))
        wait_for(lambda: _ran_since(beat_file(report), before), 10, "the terminal job to keep running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)


# ------------------------------------------------------------------ 5: zombies

def _slow_hook(tmp_path: Path, seconds: float) -> list[str]:
    """A pre-checkpoint hook that sleeps; its argv names tmp_path, so the workloads
    fixture kills it at teardown."""
    return [sys.executable, "-c", f"import time; time.sleep({seconds})", str(tmp_path)]


def _rolled_back(d: Daemon, c: SnapdClient, pid: int, report: Path, digest: str) -> None:
    wait_for(lambda: c.status().operations_in_flight == 0, 30, "the cancelled operation to end")
    assert list(c.list().snapshots) == [], "a cancelled checkpoint left a snapshot"
    assert _running(pid), "the source of a cancelled checkpoint is not running"
    assert ask(pid, report)[1] == digest
    wait_for(lambda: not d.staging_leftovers(), 10, "staging to be removed")
    assert chunk_temporaries(d.state_dir) == []


@pytest.mark.parametrize("how", ["deadline", "rpc-cancel"])
def test_abandoned_checkpoint_rolls_back(snapd: Daemon, tmp_path: Path, workloads: Workloads, how: str) -> None:
    """A checkpoint whose caller goes away before the commit point (deadline exceeded,
    or the RPC cancelled) is rolled back: the source keeps running, no snapshot is listed."""
    pid, report, digest = start_sentinel(workloads, 8, SEED + 7)
    request = pb.CheckpointRequest(pid=pid, pre_checkpoint_hook=pb.Hook(argv=_slow_hook(tmp_path, 3)))
    with grpc.insecure_channel(snapd.target) as ch:
        stub_call = ch.unary_stream("/snapd.v1.Snapshots/Checkpoint",
                                    request_serializer=pb.CheckpointRequest.SerializeToString,
                                    response_deserializer=pb.CheckpointEvent.FromString)
        stream = stub_call(request, timeout=1.0 if how == "deadline" else None)
        first = next(stream)
        assert first.HasField("progress")
        if how == "rpc-cancel":
            stream.cancel()
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        expected = grpc.StatusCode.DEADLINE_EXCEEDED if how == "deadline" else grpc.StatusCode.CANCELLED
        assert info.value.code() == expected
    with snapd.client() as c:
        _rolled_back(snapd, c, pid, report, digest)


def test_cancelled_restore_kills_the_stopped_tree(snapd: Daemon, workloads: Workloads) -> None:
    """CancelOperation of a restore before it resumes the tree: the call ends with
    Cancelled, not with the broken chunk it met afterwards; the tree is killed and never
    ran; the snapshot restores afterwards."""
    with held_restore(snapd, workloads, SEED + 15) as held:
        answer = snapd.client().cancel(held.call.operation_id())
        assert answer.cancelled, answer.detail
    held.call.join(30)
    assert held.call.error is not None and held.call.error.error_class == "Cancelled", held.call.error
    _restores_again(snapd, held)


def test_every_progress_event_names_its_operation(snapd: Daemon, workloads: Workloads) -> None:
    """Progress.operation_id is set on every event of a checkpoint and of a restore
    (one id per call; the restore's equals RestoreResult.operation_id)."""
    pid, _, _ = start_sentinel(workloads, 16, SEED + 10)
    seen: list[pb.Progress] = []
    with snapd.client() as c:
        snap = c.checkpoint(pid, on_progress=seen.append)
        ids = {e.operation_id for e in seen}
        assert seen and len(ids) == 1 and "" not in ids, ids
        wait_for(lambda: gone(pid), 10, "the source to stop")
        seen.clear()
        res = c.restore(snap.id, on_progress=seen.append)
        assert seen and {e.operation_id for e in seen} == {res.operation_id} != {""}


# ------------------------------------------------------------------ 7: smaller ones

@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a size-limited tmpfs of the given MiB (unmounted at teardown)."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        mnt = tmp_path / "tiny"
        mnt.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True,
                           capture_output=True)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _disk_daemon(tmp_path: Path, fs: Path, *extra: str) -> Daemon:
    d = Daemon(tmp_path / "disk", ("--scratch", "disk", *extra))
    d.root.mkdir()
    d.state_dir = fs / "state"
    return d.start()


def test_checkpoint_into_full_disk_is_store_full_and_clean(tmp_path: Path, tiny_fs: Callable[[int], Path],
                                                           workloads: Workloads) -> None:
    """A checkpoint that runs out of space (staging and store on one 40 MiB filesystem)
    fails with StoreFull (exit 18); the source keeps running with its memory; no snapshot,
    no staging directory and no chunk temporary is left, without a restart."""
    d = _disk_daemon(tmp_path, tiny_fs(40))
    try:
        pid, report, digest = start_sentinel(workloads, 48, SEED + 13)
        with d.client() as c:
            err = error_of(lambda: c.checkpoint(pid))
            assert err.error_class == "StoreFull" and err.exit_code == 18, err.message
            assert list(c.list().snapshots) == []
        assert _running(pid) and ask(pid, report)[1] == digest
        wait_for(lambda: not d.staging_leftovers(), 10, "staging to be removed")
        assert chunk_temporaries(d.state_dir) == []
    finally:
        d.stop()


def test_restore_into_full_disk_is_store_full_and_leaves_no_process(tmp_path: Path,
                                                                    tiny_fs: Callable[[int], Path],
                                                                    workloads: Workloads) -> None:
    """A restore that cannot stage its images (filesystem full) fails with StoreFull
    (exit 18) and leaves no process; nothing is left in staging; once space is back the
    snapshot restores with its memory."""
    fs = tiny_fs(128)
    d = _disk_daemon(tmp_path, fs, "--inject-min-mb", "0")
    try:
        pid, report, digest = start_sentinel(workloads, 12, SEED + 14)
        beat = beat_file(report)
        with d.client() as c:
            snap = c.checkpoint(pid)
            wait_for(lambda: gone(pid), 10, "the source to stop")
            wait_for(lambda: not d.staging_leftovers(), 10, "the checkpoint's staging to be freed")
            st = os.statvfs(fs)
            filler = fs / "filler"
            with filler.open("wb") as f:
                os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - (2 << 20), 1))
            beat.unlink()
            err = error_of(lambda: c.restore(snap.id))
            assert err.error_class == "RestoreSpaceFull" and err.exit_code == 18, err.message
            assert "nothing was restored" in err.message
            wait_for(lambda: gone(pid), 10, "no process of the failed restore")
            assert heartbeat(beat) is None
            wait_for(lambda: not d.staging_leftovers(), 10, "staging to be removed")
            filler.unlink()
            c.restore(snap.id)
        assert ask(pid, report)[1] == digest
    finally:
        d.stop()
