"""The bounds of every numeric field of every snapd.v1 request, checked at the API edge.

``check`` walks a decoded request (nested messages included) and refuses a number outside
its field's bound with InvalidRequest naming the field, the value and the limit, before any
handler sees it. ``BOUNDS`` must name every numeric field a request can carry: a new field
without a bound fails ``check`` (INTERNAL) and tests/test_bounds.py, which walks the proto
descriptor, so that none slips through. docs/limits.md lists the same table for users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from snapd_daemon.errors import InvalidRequest
from snapd_daemon.host.hooks import MAX_TIMEOUT
from snapd_daemon.host.processes import MAX_PID

_NUMERIC = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_ENUM,
})


@dataclass(frozen=True)
class Bound:
    low: int
    high: int
    why: str  # what the high limit is, for the message


# seconds a caller may make the daemon wait for a restore's pids to be freed
MAX_WAIT_FOR_EXIT = 3600
# milliseconds the CUDA driver may wait for in-flight GPU work when locking
MAX_CUDA_LOCK_TIMEOUT_MS = 600_000
# a memory.max above any host's memory (1 PiB)
MAX_MEMORY_BYTES = 1 << 50
# snapshots of one name a gc keeps
MAX_KEEP_LAST = 1_000_000
# seconds StopInstance waits between SIGTERM and SIGKILL
MAX_STOP_GRACE = 3600
# milliseconds a restore waits for a readiness probe, or for an answer check's answer
MAX_PROBE_MS = 3_600_000

BOUNDS: dict[str, Bound] = {
    "snapd.v1.CheckpointRequest.pid": Bound(1, MAX_PID, "the kernel's PID_MAX_LIMIT"),
    "snapd.v1.CheckpointRequest.cuda_lock_timeout_ms": Bound(0, MAX_CUDA_LOCK_TIMEOUT_MS, "10 minutes"),
    "snapd.v1.Hook.timeout_seconds": Bound(0, MAX_TIMEOUT, "1 hour"),
    "snapd.v1.RestoreRequest.wait_for_exit_seconds": Bound(0, MAX_WAIT_FOR_EXIT, "1 hour"),
    "snapd.v1.RestoreRequest.tcp": Bound(0, 1, "the TcpRestore values: 0 close, 1 reestablish"),
    "snapd.v1.CgroupSpec.memory_max_bytes": Bound(0, MAX_MEMORY_BYTES, "1 PiB"),
    "snapd.v1.CgroupSpec.pids_max": Bound(0, MAX_PID, "the kernel's PID_MAX_LIMIT"),
    "snapd.v1.RestoreRequest.gpu_policy": Bound(0, 2, "the GpuPolicy values: 0 the daemon's, 1 shared, 2 exclusive"),
    "snapd.v1.RestoreRequest.into_pid": Bound(0, MAX_PID, "the kernel's PID_MAX_LIMIT"),
    "snapd.v1.CollectGarbageRequest.keep_last": Bound(0, MAX_KEEP_LAST, "a million snapshots of a name"),
    "snapd.v1.StopInstanceRequest.grace_seconds": Bound(0, MAX_STOP_GRACE, "1 hour"),
    "snapd.v1.WatchEventsRequest.after_sequence": Bound(0, (1 << 63) - 1, "the largest sequence number"),
    "snapd.v1.ReadyProbe.http_status": Bound(0, 599, "the largest HTTP status"),
    "snapd.v1.ReadyProbe.timeout_ms": Bound(0, MAX_PROBE_MS, "1 hour"),
    "snapd.v1.AnswerCheck.timeout_ms": Bound(0, MAX_PROBE_MS, "1 hour"),
}


def is_numeric(field: FieldDescriptor) -> bool:
    return field.type in _NUMERIC


def check(message: Message, prefix: str = "") -> None:
    """Refuse ``message`` (a request) when one of its numeric fields is out of bounds."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if not field.message_type.GetOptions().map_entry:
                for item in _items(value):
                    check(item, name + ".")
        elif is_numeric(field):
            bound = BOUNDS[field.full_name]
            for number in _items(value):
                if not bound.low <= number <= bound.high:
                    raise InvalidRequest(field=name, reason=f"{number} is out of bounds: {bound.low} to {bound.high} "
                                         f"({bound.why})")


def _items(value: Any) -> list[Any]:
    """A field's values: those of a repeated field, else the one."""
    return [value] if isinstance(value, (int, float, Message)) else list(value)
