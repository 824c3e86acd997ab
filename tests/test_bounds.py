"""Every numeric field of every request bounded at the API edge (issue #23, item 7).

The proto descriptor is walked (nested messages included), so that a numeric field added
later without a bound in api/bounds.py, or without its line in docs/limits.md, fails here.
Then a daemon is asked with values one past each bound, 2^40 for a pid included (an int32
would have cut it to 0 on the wire), and answers InvalidRequest naming field, value and limit.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from harness import Daemon, snapd
from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc
from snapd_daemon.api.bounds import BOUNDS, is_numeric

LIMITS_DOC = Path(__file__).resolve().parent.parent / "docs" / "limits.md"


def numeric_request_fields() -> list[FieldDescriptor]:
    """Every numeric field reachable from the input message of every Snapshots method."""
    found: dict[str, FieldDescriptor] = {}
    seen: set[str] = set()

    def walk(message: Descriptor) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                walk(field.message_type)
            elif is_numeric(field):
                found[field.full_name] = field

    for method in pb.DESCRIPTOR.services_by_name["Snapshots"].methods:
        walk(method.input_type)
    return sorted(found.values(), key=lambda f: f.full_name)


def test_every_numeric_request_field_has_a_bound_and_a_line_in_the_docs() -> None:
    fields = numeric_request_fields()
    assert len(fields) >= 8
    assert [f.full_name for f in fields if f.full_name not in BOUNDS] == []
    assert sorted(BOUNDS) == [f.full_name for f in fields], "a bound for a field that is no longer there"
    doc = LIMITS_DOC.read_text()
    assert [f.full_name for f in fields if f"`{f.full_name.removeprefix('snapd.v1.')}`" not in doc] == []
    wide = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_ENUM)
    assert [f.full_name for f in fields if f.type not in wide] == [], "a 32-bit field cuts what it receives"


def _refused(call: grpc.UnaryUnaryMultiCallable | grpc.UnaryStreamMultiCallable, request: object, field: str,
             value: int, limit: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=30)
        if not isinstance(result, pb.CollectGarbageResponse):
            list(result)  # type: ignore[call-overload]
    err = info.value
    trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err  # type: ignore[attr-defined]
    assert trailers["snapd-error"] == "InvalidRequest" and trailers["snapd-exit-code"] == "10"
    message = err.details()  # type: ignore[attr-defined]
    assert field in message and str(value) in message and str(limit) in message, message


def test_out_of_bounds_values_are_refused_naming_field_value_and_limit(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        stub = snapd_pb2_grpc.SnapshotsStub(channel)
        _refused(stub.Checkpoint, pb.CheckpointRequest(pid=1 << 40), "pid", 1 << 40, 4194304)
        _refused(stub.Checkpoint, pb.CheckpointRequest(pid=4194305), "pid", 4194305, 4194304)
        _refused(stub.Checkpoint, pb.CheckpointRequest(pid=-1), "pid", -1, 4194304)
        _refused(stub.Checkpoint, pb.CheckpointRequest(pid=1, cuda_lock_timeout_ms=600_001),
                 "cuda_lock_timeout_ms", 600_001, 600_000)
        _refused(stub.Checkpoint, pb.CheckpointRequest(pid=1, pre_checkpoint_hook=pb.Hook(
            argv=["true"], timeout_seconds=(1 << 32) + 5)), "pre_checkpoint_hook.timeout_seconds", (1 << 32) + 5, 3600)
        _refused(stub.Restore, pb.RestoreRequest(snapshot="x", wait_for_exit_seconds=4294967295),
                 "wait_for_exit_seconds", 4294967295, 3600)
        _refused(stub.Restore, pb.RestoreRequest(snapshot="x", cgroup=pb.CgroupSpec(
            path="a", pids_max=1 << 40)), "cgroup.pids_max", 1 << 40, 4194304)
        _refused(stub.Restore, pb.RestoreRequest(snapshot="x", cgroup=pb.CgroupSpec(
            path="a", memory_max_bytes=1 << 60)), "cgroup.memory_max_bytes", 1 << 60, 1 << 50)
        _refused(stub.Restore, pb.RestoreRequest(snapshot="x", tcp=7), "tcp", 7, 1)
        _refused(stub.CollectGarbage, pb.CollectGarbageRequest(keep_last=1 << 33), "keep_last", 1 << 33, 1_000_000)
        _refused(stub.Restore, pb.RestoreRequest(snapshot="x", gpu_policy=9), "gpu_policy", 9, 2)
        _refused(stub.StopInstance, pb.StopInstanceRequest(instance="in-0", grace_seconds=1 << 33),
                 "grace_seconds", 1 << 33, 3600)
    cli = snapd(daemon, "checkpoint", str(1 << 40))
    assert cli.returncode == 2 and "4194304" in cli.stderr and "Traceback" not in cli.stderr
