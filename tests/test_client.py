"""The client for schedulers: one exception class per daemon error class (carrying the exit code
and the error's fields), deadlines per call, and the asyncio client, against a real daemon
(real CRIU checkpoints and restores of real processes)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from harness import Daemon, Workloads, ask, gone, wait_for
from snapd_client import DEFAULT, OPERATION, QUERY, STORE, AsyncSnapdClient, SnapdClient, SnapdClientError, errors
from snapd_daemon.api.status import MAX_FIELD, MAX_FIELDS, fields_json
from snapd_daemon.errors import ALL_ERRORS, SnapdError, StoreError

ROOT = Path(__file__).resolve().parent.parent


def test_the_client_table_is_generated_from_the_daemon_errors() -> None:
    """errors.json is what scripts/gen-client-errors.py makes of errors.ALL_ERRORS now (run it
    after changing the daemon's errors), and every daemon class has its client class."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        generator = __import__("gen-client-errors")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert generator.TABLE.read_text() == generator.render(), "run scripts/gen-client-errors.py"
    for cls in ALL_ERRORS:
        client_cls = errors.CLASSES[cls.__name__]
        if cls is SnapdError:
            assert client_cls is errors.SnapdClientError
            continue
        assert getattr(errors, cls.__name__) is client_cls and issubclass(client_cls, errors.SnapdClientError)
        assert (client_cls.exit_code, client_cls.status) == (cls.exit_code, cls.status)  # type: ignore[attr-defined]
        assert client_cls.__bases__[0] is errors.CLASSES.get(cls.__bases__[0].__name__)
        assert client_cls.__doc__ == " ".join((cls.__doc__ or "").split())
    assert issubclass(errors.RestoreSpaceFull, errors.StoreFull)


def test_the_client_package_never_imports_the_daemon() -> None:
    code = ("import sys, snapd_client, snapd_client.cli, snapd_client.aio; "
            "print([m for m in sys.modules if m.startswith('snapd_daemon')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_error_fields_travel_bounded() -> None:
    err = StoreError(path=Path("/var/lib/x"), reason="r" * 5000)
    fields = json.loads(fields_json(err))
    assert fields["path"] == "/var/lib/x" and fields["reason"].startswith("r" * MAX_FIELD)
    assert "4500 more characters cut" in fields["reason"]
    many = SnapdError(**{f"f{i}": "x" * MAX_FIELD for i in range(20)})
    text = fields_json(many)
    assert len(text) <= MAX_FIELDS and json.loads(text)["_cut"]


def test_deadlines_default_per_kind_of_call_unless_the_client_or_the_call_says() -> None:
    assert (QUERY, STORE, OPERATION) == (30.0, 600.0, 3600.0)
    with SnapdClient("unix:///nonexistent/snapd.sock") as c:
        assert c._deadline(DEFAULT, STORE) == STORE and c._deadline(None, QUERY) is None
        assert c._deadline(5.0, OPERATION) == 5.0
    with SnapdClient("unix:///nonexistent/snapd.sock", timeout=7.0) as c:  # the constructor's: every call's
        assert c._deadline(DEFAULT, OPERATION) == 7.0 and c._deadline(1.0, QUERY) == 1.0


def test_each_daemon_error_raises_its_own_class_with_exit_code_and_fields(client: SnapdClient,
                                                                          workloads: Workloads) -> None:
    with pytest.raises(errors.SnapshotNotFound) as info:
        client.get("no-such-snapshot")
    err = info.value
    assert isinstance(err, SnapdClientError) and err.error_class == "SnapshotNotFound" and err.exit_code == 14
    assert err.fields == {"snapshot": "no-such-snapshot"} and err.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(errors.InvalidRequest) as bad:
        client.restore("x", gpu_uuid_map={"GPU-bogus": "GPU-bogus"})
    assert bad.value.fields["field"] == "gpu_uuid_map" and bad.value.exit_code == 10
    pid, _ = workloads.start("memhold.py", "8")
    snap = client.checkpoint(pid, leave_running=True)
    with pytest.raises(errors.PidsInUse) as busy:  # the original still runs
        client.restore(snap.id, wait_for_exit_seconds=1)
    assert busy.value.fields["pid"] == pid and busy.value.fields["snapshot_id"] == snap.id
    assert busy.value.exit_code == 15


def test_a_call_past_its_deadline_raises_deadline_exceeded_and_its_operation_rolls_back(
        daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    with pytest.raises(errors.DeadlineExceeded) as info:
        client.checkpoint(pid, pre_checkpoint_hook=["sleep", "1.5"], timeout=0.5)
    err = info.value
    assert err.exit_code == 81 and err.fields == {"method": "Checkpoint", "timeout": 0.5}
    assert "Checkpoint passed its deadline of 0.5 s" in err.message
    wait_for(lambda: not client.operations().operations, 60, "the checkpoint to roll back")
    assert not client.list().snapshots and ask(pid, report)[1] == digest


def test_unreachable_is_its_own_class(tmp_path: Path) -> None:
    with SnapdClient(f"unix://{tmp_path}/none.sock") as c, pytest.raises(errors.Unreachable) as info:
        c.status(timeout=5)
    assert info.value.exit_code == 3 and "cannot reach the snapd daemon" in info.value.message


async def no_operations(c: AsyncSnapdClient) -> None:
    """Returns once the daemon runs no operation."""
    while (await c.operations()).operations:
        await asyncio.sleep(0.05)


def test_asyncio_client_checkpoints_and_restores_a_real_process(daemon: Daemon, client: SnapdClient,
                                                                workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "16")
    _, digest, _ = report.read_text().split()

    async def scenario() -> None:
        async with AsyncSnapdClient(daemon.target) as c:
            phases: list[int] = []
            snap = await c.checkpoint(pid, name="aio", on_progress=lambda p: phases.append(p.phase))
            assert snap.name == "aio" and phases and [p.pid for p in snap.processes] == [pid]
            wait_for(lambda: gone(pid), 30, "the checkpointed process to stop")
            listed, status = await asyncio.gather(c.list(), c.status())
            assert [s.id for s in listed.snapshots] == [snap.id] and status.snapshots == 1
            result = await c.restore("aio")
            assert result.root_pid == pid and result.snapshot_id == snap.id
            with pytest.raises(errors.PidsInUse) as info:  # restored: its pids are taken again
                await c.restore("aio", wait_for_exit_seconds=1)
            assert info.value.fields["pid"] == pid
            with pytest.raises(errors.SnapshotNotFound):
                await c.get("nope")
            exported, again = io.BytesIO(), io.BytesIO()  # server streams: the same bytes as the sync client's
            assert await c.export_snapshot("aio", exported) == client.export_snapshot("aio", again) > 0
            assert exported.getvalue() == again.getvalue()
            with pytest.raises(errors.SnapshotNotFound):
                await c.export_snapshot("nope", io.BytesIO())
            with pytest.raises(errors.DeadlineExceeded):
                await c.checkpoint(pid, leave_running=True, pre_checkpoint_hook=["sleep", "1.5"], timeout=0.5)
            # the deadline cancelled the operation on the server too: it rolls back and ends (the pid is free again)
            await asyncio.wait_for(no_operations(c), 60)
            # cancelling the awaiting task cancels the call, and its checkpoint rolls back
            started = asyncio.Event()
            task = asyncio.create_task(c.checkpoint(pid, leave_running=True, pre_checkpoint_hook=["sleep", "1.5"],
                                                    on_progress=lambda _p: started.set()))
            await asyncio.wait_for(started.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    wait_for(lambda: not client.operations().operations, 60, "the cancelled checkpoints to roll back")
    assert [s.name for s in client.list().snapshots] == ["aio"]
    assert ask(pid, report)[1] == digest  # the restored process holds its memory as before
