"""Requests in: every caller-supplied value checked, and protobuf requests turned into typed specs.

All validation of what a caller sends happens here (pids and log names through
the host adapters that own those rules, snapshot names and labels through
snapshots/naming.py, which imports answer to as well), before any operation starts; an
operation receives a spec it can trust.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from snapd.v1 import snapd_pb2 as pb
from snapd_daemon.checkpoint import CheckpointSpec
from snapd_daemon.errors import InvalidRequest
from snapd_daemon.host.cgroups import CgroupRequest
from snapd_daemon.host.hooks import Hook
from snapd_daemon.host.probes import AnswerCheck, ReadyProbe
from snapd_daemon.host.processes import MAX_PID, validate_pid
from snapd_daemon.host.stdio import validate_log_name
from snapd_daemon.restore import RestoreSpec
from snapd_daemon.snapshots.naming import labels, snapshot_name

MAX_REF = 256
OPERATION_ID_RE = re.compile(r"op-[0-9a-f]{12}")
# an instance id or its start, "in-" optional
INSTANCE_REF_RE = re.compile(r"(in-)?[0-9a-f]{1,12}")


def snapshot_ref(ref: str) -> str:
    if not ref:
        raise InvalidRequest(field="snapshot", reason="empty; give a snapshot id or name")
    if len(ref) > MAX_REF or "/" in ref or ref in (".", "..") or any(ord(c) < 32 for c in ref):
        raise InvalidRequest(field="snapshot", reason=f"{ref[:40]!r} is not a snapshot id or name")
    return ref


def instance_ref(ref: str) -> str:
    """An instance id or the start of one, with "in-" added when left out."""
    if not INSTANCE_REF_RE.fullmatch(ref):
        raise InvalidRequest(field="instance", reason=f"{ref[:40]!r} is not an instance id or its start (in- and up "
                             "to 12 hex digits, as `snapd ps` shows)")
    return ref if ref.startswith("in-") else "in-" + ref


def operation_id(value: str) -> str:
    if not OPERATION_ID_RE.fullmatch(value):
        raise InvalidRequest(field="operation_id", reason=f"{value[:40]!r} is not an operation id (op- and 12 hex "
                             "digits, as in Progress.operation_id)")
    return value


GPU_UUID_RE = re.compile(r"GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def gpu_uuid_map(mapping: dict[str, str]) -> dict[str, str]:
    for old, new in mapping.items():
        for uuid in (old, new):
            if not GPU_UUID_RE.fullmatch(uuid):
                raise InvalidRequest(field="gpu_uuid_map", reason=f"{uuid[:60]!r} is not a GPU UUID (GPU-xxxxxxxx-...)")
    return dict(mapping)


CGROUP_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
MAX_CGROUP_DEPTH = 8
# Names the kernel uses for interface files (a group named so would clash with one).
_CGROUP_FILE_PREFIXES = ("cgroup.", "memory.", "cpu.", "cpuset.", "pids.", "io.", "hugetlb.", "rdma.", "misc.")
CPU_MAX_RE = re.compile(r"(max|[0-9]{1,18})(?: ([0-9]{1,7}))?")
CPU_LIST_RE = re.compile(r"[0-9]{1,5}(-[0-9]{1,5})?(,[0-9]{1,5}(-[0-9]{1,5})?){0,63}")


def cgroup_request(
    path: str, create: bool, *, memory_max: int = 0, cpu_max: str = "", pids_max: int = 0,
    cpuset_cpus: str = "", cpuset_mems: str = "",
) -> CgroupRequest:
    """A cgroup path relative to the delegated root, and the limits to write (0 / "" = leave as is).

    Paths are 1-8 components of [A-Za-z0-9._-] (64 chars each, not starting with "." or "-",
    not named like a cgroup interface file); absolute paths, "..", "." and empty components
    are refused here, before the file system is touched.
    """
    shown = path if len(path) <= 80 else path[:80] + f"... ({len(path)} chars)"
    if not path:
        raise InvalidRequest(field="cgroup.path", reason="empty; give a group below the daemon's cgroup root")
    if path.startswith("/"):
        raise InvalidRequest(field="cgroup.path",
                             reason=f"{shown!r} is absolute; give it relative to the daemon's cgroup root")
    parts = path.split("/")
    if len(parts) > MAX_CGROUP_DEPTH:
        raise InvalidRequest(field="cgroup.path",
                             reason=f"{shown!r} is {len(parts)} levels deep, at most {MAX_CGROUP_DEPTH}")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidRequest(field="cgroup.path", reason=f"{shown!r} has an empty, '.' or '..' component")
        if not CGROUP_PART_RE.fullmatch(part) or part.startswith(_CGROUP_FILE_PREFIXES):
            raise InvalidRequest(
                field="cgroup.path",
                reason=f"component {part[:70]!r} must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a "
                "letter, digit or _, and not be named like a cgroup interface file",
            )
    limits = {}
    if memory_max:
        limits["memory.max"] = str(memory_max)
    if cpu_max:
        match = CPU_MAX_RE.fullmatch(cpu_max)
        quota_ok = match and (match.group(1) == "max" or int(match.group(1)) >= 1000)
        period_ok = match and (match.group(2) is None or 1000 <= int(match.group(2)) <= 1_000_000)
        if not (quota_ok and period_ok):
            raise InvalidRequest(field="cgroup.cpu_max", reason=f"{cpu_max[:40]!r} is not 'max' or 'QUOTA [PERIOD]' "
                                 "in microseconds (quota >= 1000, period 1000-1000000)")
        limits["cpu.max"] = cpu_max
    if pids_max:
        if pids_max > MAX_PID:
            raise InvalidRequest(field="cgroup.pids_max", reason=f"{pids_max} is above the kernel's {MAX_PID}")
        limits["pids.max"] = str(pids_max)
    for name, value in (("cpuset.cpus", cpuset_cpus), ("cpuset.mems", cpuset_mems)):
        if value:
            if not CPU_LIST_RE.fullmatch(value):
                raise InvalidRequest(field=f"cgroup.{name.replace('.', '_')}",
                                     reason=f"{value[:40]!r} is not a list like '0-7,16'")
            limits[name] = value
    return CgroupRequest(parts=tuple(parts), create=create, limits=limits)


def checkpoint_spec(request: pb.CheckpointRequest) -> CheckpointSpec:
    validate_pid(request.pid)
    return CheckpointSpec(
        pid=request.pid,
        name=snapshot_name(request.name),
        labels=labels(dict(request.labels)),
        leave_running=request.leave_running,
        pre_hook=Hook.parse("pre_checkpoint_hook", list(request.pre_checkpoint_hook.argv),
                            request.pre_checkpoint_hook.timeout_seconds),
        cuda_lock_timeout_ms=request.cuda_lock_timeout_ms,
        keep_hot=request.keep_hot,
        tcp_established=request.tcp_established,
        ext_unix_sk=request.ext_unix_sk,
        link_remap=request.link_remap,
        ready_probe=ready_probe(request.ready_probe) if request.HasField("ready_probe") else None,
        verify=answer_check(request.verify) if request.HasField("verify") else None,
    )


MAX_VERIFY_BODY = 1 << 20


def _http_url(field: str, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        valid = parts.scheme == "http" and bool(parts.hostname) and (parts.port or 80) > 0
    except ValueError:  # a port out of range
        valid = False
    if not valid or len(url) > 2048 or any(ord(c) < 33 for c in url):
        raise InvalidRequest(field=field, reason=f"{url[:80]!r} is not an http:// URL with a host (as the tree sees "
                             "it: http://127.0.0.1:8000/health)")
    return url


def ready_probe(probe: pb.ReadyProbe) -> ReadyProbe:
    """Exactly one of an http:// URL (with the status it passes on, 0: 200) and a command."""
    if bool(probe.http_url) == bool(probe.command):
        raise InvalidRequest(field="ready_probe", reason="give either http_url (--ready-http) or command "
                             "(--ready-cmd), not both or neither")
    if probe.http_status and probe.http_status < 100:
        raise InvalidRequest(field="ready_probe.http_status", reason=f"{probe.http_status} is not an HTTP status")
    if probe.http_status and probe.command:
        raise InvalidRequest(field="ready_probe.http_status", reason="goes with http_url, not with a command")
    if len(probe.command) > 4096 or "\0" in probe.command:
        raise InvalidRequest(field="ready_probe.command", reason="longer than 4096 characters, or holds a NUL")
    return ReadyProbe(url=_http_url("ready_probe.http_url", probe.http_url) if probe.http_url else "",
                      status=probe.http_status or 200, command=probe.command,
                      timeout=probe.timeout_ms / 1000 or 60.0)


def answer_check(check: pb.AnswerCheck) -> AnswerCheck:
    """An http:// URL and the body to POST it (at most 1 MiB)."""
    if len(check.body.encode()) > MAX_VERIFY_BODY:
        raise InvalidRequest(field="verify.body", reason=f"{len(check.body.encode())} bytes, at most {MAX_VERIFY_BODY}")
    if len(check.json_field) > 256:
        raise InvalidRequest(field="verify.json_field", reason="longer than 256 characters")
    return AnswerCheck(url=_http_url("verify.http_url", check.http_url), body=check.body, json_field=check.json_field,
                       timeout=check.timeout_ms / 1000 or 30.0)


def restore_spec(request: pb.RestoreRequest) -> RestoreSpec:
    return RestoreSpec(
        ref=snapshot_ref(request.snapshot),
        wait_seconds=request.wait_for_exit_seconds if request.HasField("wait_for_exit_seconds") else None,
        gpu_uuid_map=gpu_uuid_map(dict(request.gpu_uuid_map)),
        post_hook=Hook.parse("post_restore_hook", list(request.post_restore_hook.argv),
                             request.post_restore_hook.timeout_seconds),
        cgroup=_cgroup_request(request.cgroup) if request.HasField("cgroup") else None,
        log_name=validate_log_name(request.log_name),
        tcp=_tcp_restore(request.tcp),
        publish_host=publish_host(request.publish_host),
        gpu_policy=_gpu_policy(request.gpu_policy),
        into=_into(request),
        wait_ready=request.wait_ready if request.HasField("wait_ready") else None,
        verify=request.verify,
    )


def _into(request: pb.RestoreRequest) -> int:
    """The sandbox pid to restore into (0: none); with it, neither a cgroup nor a publish host."""
    pid = request.into_pid
    if pid and request.HasField("cgroup"):
        raise InvalidRequest(field="cgroup", reason="a restore into a sandbox goes into a new group below the "
                             "sandbox's cgroup; leave cgroup unset with into_pid")
    if pid and request.publish_host:
        raise InvalidRequest(field="publish_host", reason="a restore into a sandbox publishes nothing: its ports "
                             "are the sandbox's, at the sandbox's address; leave publish_host unset with into_pid")
    return pid


_TCP_RESTORE = {pb.TCP_RESTORE_CLOSE: "close", pb.TCP_RESTORE_REESTABLISH: "reestablish"}


def _tcp_restore(value: int) -> str:
    if value not in _TCP_RESTORE:
        raise InvalidRequest(field="tcp", reason=f"{value} is not a TcpRestore value (0 close, 1 reestablish)")
    return _TCP_RESTORE[value]


_GPU_POLICY = {pb.GPU_POLICY_DEFAULT: "", pb.GPU_POLICY_SHARED: "shared", pb.GPU_POLICY_EXCLUSIVE: "exclusive"}


def _gpu_policy(value: int) -> str:
    if value not in _GPU_POLICY:
        raise InvalidRequest(field="gpu_policy", reason=f"{value} is not a GpuPolicy value (0 the daemon's default, "
                             "1 shared, 2 exclusive)")
    return _GPU_POLICY[value]


def publish_host(host: str) -> str:
    """An IP address to publish a restored network namespace's ports on ("": 127.0.0.1)."""
    if not host:
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise InvalidRequest(field="publish_host", reason=f"{host[:60]!r} is not an IP address") from None


def _cgroup_request(spec: pb.CgroupSpec) -> CgroupRequest:
    return cgroup_request(
        spec.path, spec.create, memory_max=spec.memory_max_bytes, cpu_max=spec.cpu_max, pids_max=spec.pids_max,
        cpuset_cpus=spec.cpuset_cpus, cpuset_mems=spec.cpuset_mems,
    )
