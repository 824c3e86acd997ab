import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GpuPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GPU_POLICY_DEFAULT: _ClassVar[GpuPolicy]
    GPU_POLICY_SHARED: _ClassVar[GpuPolicy]
    GPU_POLICY_EXCLUSIVE: _ClassVar[GpuPolicy]

class TcpRestore(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TCP_RESTORE_CLOSE: _ClassVar[TcpRestore]
    TCP_RESTORE_REESTABLISH: _ClassVar[TcpRestore]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_VALIDATE: _ClassVar[Phase]
    PHASE_DUMP: _ClassVar[Phase]
    PHASE_COMMIT: _ClassVar[Phase]
    PHASE_STOP_SOURCE: _ClassVar[Phase]
    PHASE_PREPARE: _ClassVar[Phase]
    PHASE_RESTORE: _ClassVar[Phase]
    PHASE_GPU_CHECKPOINT: _ClassVar[Phase]
    PHASE_GPU_RESTORE: _ClassVar[Phase]
    PHASE_HOOK: _ClassVar[Phase]
    PHASE_INJECT: _ClassVar[Phase]
    PHASE_WAIT_READY: _ClassVar[Phase]
    PHASE_VERIFY: _ClassVar[Phase]
    PHASE_UPLOAD: _ClassVar[Phase]
    PHASE_DOWNLOAD: _ClassVar[Phase]

class InstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATE_UNSPECIFIED: _ClassVar[InstanceState]
    INSTANCE_STATE_STARTING: _ClassVar[InstanceState]
    INSTANCE_STATE_READY: _ClassVar[InstanceState]
    INSTANCE_STATE_RUNNING: _ClassVar[InstanceState]
    INSTANCE_STATE_EXITED: _ClassVar[InstanceState]
    INSTANCE_STATE_STOPPED: _ClassVar[InstanceState]
GPU_POLICY_DEFAULT: GpuPolicy
GPU_POLICY_SHARED: GpuPolicy
GPU_POLICY_EXCLUSIVE: GpuPolicy
TCP_RESTORE_CLOSE: TcpRestore
TCP_RESTORE_REESTABLISH: TcpRestore
PHASE_UNSPECIFIED: Phase
PHASE_VALIDATE: Phase
PHASE_DUMP: Phase
PHASE_COMMIT: Phase
PHASE_STOP_SOURCE: Phase
PHASE_PREPARE: Phase
PHASE_RESTORE: Phase
PHASE_GPU_CHECKPOINT: Phase
PHASE_GPU_RESTORE: Phase
PHASE_HOOK: Phase
PHASE_INJECT: Phase
PHASE_WAIT_READY: Phase
PHASE_VERIFY: Phase
PHASE_UPLOAD: Phase
PHASE_DOWNLOAD: Phase
INSTANCE_STATE_UNSPECIFIED: InstanceState
INSTANCE_STATE_STARTING: InstanceState
INSTANCE_STATE_READY: InstanceState
INSTANCE_STATE_RUNNING: InstanceState
INSTANCE_STATE_EXITED: InstanceState
INSTANCE_STATE_STOPPED: InstanceState

class CheckpointRequest(_message.Message):
    __slots__ = ("pid", "name", "labels", "leave_running", "pre_checkpoint_hook", "cuda_lock_timeout_ms", "keep_hot", "tcp_established", "ext_unix_sk", "link_remap", "push", "ready_probe", "verify")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    PRE_CHECKPOINT_HOOK_FIELD_NUMBER: _ClassVar[int]
    CUDA_LOCK_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    KEEP_HOT_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    EXT_UNIX_SK_FIELD_NUMBER: _ClassVar[int]
    LINK_REMAP_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    READY_PROBE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    labels: _containers.ScalarMap[str, str]
    leave_running: bool
    pre_checkpoint_hook: Hook
    cuda_lock_timeout_ms: int
    keep_hot: bool
    tcp_established: bool
    ext_unix_sk: bool
    link_remap: bool
    push: bool
    ready_probe: ReadyProbe
    verify: AnswerCheck
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., leave_running: _Optional[bool] = ..., pre_checkpoint_hook: _Optional[_Union[Hook, _Mapping]] = ..., cuda_lock_timeout_ms: _Optional[int] = ..., keep_hot: _Optional[bool] = ..., tcp_established: _Optional[bool] = ..., ext_unix_sk: _Optional[bool] = ..., link_remap: _Optional[bool] = ..., push: _Optional[bool] = ..., ready_probe: _Optional[_Union[ReadyProbe, _Mapping]] = ..., verify: _Optional[_Union[AnswerCheck, _Mapping]] = ...) -> None: ...

class ReadyProbe(_message.Message):
    __slots__ = ("http_url", "http_status", "command", "timeout_ms")
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    http_url: str
    http_status: int
    command: str
    timeout_ms: int
    def __init__(self, http_url: _Optional[str] = ..., http_status: _Optional[int] = ..., command: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class AnswerCheck(_message.Message):
    __slots__ = ("http_url", "body", "json_field", "timeout_ms")
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    http_url: str
    body: str
    json_field: str
    timeout_ms: int
    def __init__(self, http_url: _Optional[str] = ..., body: _Optional[str] = ..., json_field: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class Hook(_message.Message):
    __slots__ = ("argv", "timeout_seconds")
    ARGV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    timeout_seconds: int
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("snapshot", "wait_for_exit_seconds", "gpu_uuid_map", "post_restore_hook", "cgroup", "log_name", "tcp", "publish_host", "gpu_policy", "into_pid", "wait_ready", "verify")
    class GpuUuidMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_EXIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_MAP_FIELD_NUMBER: _ClassVar[int]
    POST_RESTORE_HOOK_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    LOG_NAME_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_HOST_FIELD_NUMBER: _ClassVar[int]
    GPU_POLICY_FIELD_NUMBER: _ClassVar[int]
    INTO_PID_FIELD_NUMBER: _ClassVar[int]
    WAIT_READY_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    wait_for_exit_seconds: int
    gpu_uuid_map: _containers.ScalarMap[str, str]
    post_restore_hook: Hook
    cgroup: CgroupSpec
    log_name: str
    tcp: TcpRestore
    publish_host: str
    gpu_policy: GpuPolicy
    into_pid: int
    wait_ready: bool
    verify: bool
    def __init__(self, snapshot: _Optional[str] = ..., wait_for_exit_seconds: _Optional[int] = ..., gpu_uuid_map: _Optional[_Mapping[str, str]] = ..., post_restore_hook: _Optional[_Union[Hook, _Mapping]] = ..., cgroup: _Optional[_Union[CgroupSpec, _Mapping]] = ..., log_name: _Optional[str] = ..., tcp: _Optional[_Union[TcpRestore, str]] = ..., publish_host: _Optional[str] = ..., gpu_policy: _Optional[_Union[GpuPolicy, str]] = ..., into_pid: _Optional[int] = ..., wait_ready: _Optional[bool] = ..., verify: _Optional[bool] = ...) -> None: ...

class CgroupSpec(_message.Message):
    __slots__ = ("path", "create", "memory_max_bytes", "cpu_max", "pids_max", "cpuset_cpus", "cpuset_mems")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_MAX_FIELD_NUMBER: _ClassVar[int]
    PIDS_MAX_FIELD_NUMBER: _ClassVar[int]
    CPUSET_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_MEMS_FIELD_NUMBER: _ClassVar[int]
    path: str
    create: bool
    memory_max_bytes: int
    cpu_max: str
    pids_max: int
    cpuset_cpus: str
    cpuset_mems: str
    def __init__(self, path: _Optional[str] = ..., create: _Optional[bool] = ..., memory_max_bytes: _Optional[int] = ..., cpu_max: _Optional[str] = ..., pids_max: _Optional[int] = ..., cpuset_cpus: _Optional[str] = ..., cpuset_mems: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("operation_id", "phase", "bytes_done", "bytes_total", "message", "tree_frozen")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TREE_FROZEN_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    phase: Phase
    bytes_done: int
    bytes_total: int
    message: str
    tree_frozen: bool
    def __init__(self, operation_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., message: _Optional[str] = ..., tree_frozen: _Optional[bool] = ...) -> None: ...

class CheckpointEvent(_message.Message):
    __slots__ = ("progress", "snapshot")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    snapshot: Snapshot
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class RestoreEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: RestoreResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[RestoreResult, _Mapping]] = ...) -> None: ...

class RestoreResult(_message.Message):
    __slots__ = ("operation_id", "snapshot_id", "root_pid", "pids", "duration_seconds", "cgroup", "log_path", "published", "gpus", "pulled_bytes", "pulled_chunks", "instance_id", "ready_seconds", "verified_digest")
    class GpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_PID_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PULLED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PULLED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    READY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    snapshot_id: str
    root_pid: int
    pids: _containers.RepeatedScalarFieldContainer[int]
    duration_seconds: float
    cgroup: str
    log_path: str
    published: _containers.RepeatedCompositeFieldContainer[PublishedPort]
    gpus: _containers.ScalarMap[str, str]
    pulled_bytes: int
    pulled_chunks: int
    instance_id: str
    ready_seconds: float
    verified_digest: str
    def __init__(self, operation_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., root_pid: _Optional[int] = ..., pids: _Optional[_Iterable[int]] = ..., duration_seconds: _Optional[float] = ..., cgroup: _Optional[str] = ..., log_path: _Optional[str] = ..., published: _Optional[_Iterable[_Union[PublishedPort, _Mapping]]] = ..., gpus: _Optional[_Mapping[str, str]] = ..., pulled_bytes: _Optional[int] = ..., pulled_chunks: _Optional[int] = ..., instance_id: _Optional[str] = ..., ready_seconds: _Optional[float] = ..., verified_digest: _Optional[str] = ...) -> None: ...

class PublishedPort(_message.Message):
    __slots__ = ("port", "address")
    PORT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    port: int
    address: str
    def __init__(self, port: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "ppid", "name", "cmdline", "threads", "rss_bytes")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    name: str
    cmdline: _containers.RepeatedScalarFieldContainer[str]
    threads: int
    rss_bytes: int
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., name: _Optional[str] = ..., cmdline: _Optional[_Iterable[str]] = ..., threads: _Optional[int] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class ImageFile(_message.Message):
    __slots__ = ("name", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("id", "name", "labels", "created", "root_pid", "processes", "criu_version", "kernel", "hostname", "raw_bytes", "stored_bytes", "files", "checkpoint_seconds", "leave_running", "new_bytes", "pinned", "gpu", "hot", "source_cgroup", "damaged_chunks", "operation_id", "duration_seconds", "tcp_established", "ext_unix_sk", "link_remap", "link_remap_files", "replicable", "own_network_namespace", "namespace_ports", "ready_probe", "answer_check", "push_operation_id", "already_present")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ROOT_PID_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    HOT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CGROUP_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    EXT_UNIX_SK_FIELD_NUMBER: _ClassVar[int]
    LINK_REMAP_FIELD_NUMBER: _ClassVar[int]
    LINK_REMAP_FILES_FIELD_NUMBER: _ClassVar[int]
    REPLICABLE_FIELD_NUMBER: _ClassVar[int]
    OWN_NETWORK_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_PORTS_FIELD_NUMBER: _ClassVar[int]
    READY_PROBE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_CHECK_FIELD_NUMBER: _ClassVar[int]
    PUSH_OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    root_pid: int
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    criu_version: str
    kernel: str
    hostname: str
    raw_bytes: int
    stored_bytes: int
    files: _containers.RepeatedCompositeFieldContainer[ImageFile]
    checkpoint_seconds: float
    leave_running: bool
    new_bytes: int
    pinned: bool
    gpu: GpuInfo
    hot: bool
    source_cgroup: CgroupInfo
    damaged_chunks: _containers.RepeatedScalarFieldContainer[str]
    operation_id: str
    duration_seconds: float
    tcp_established: bool
    ext_unix_sk: bool
    link_remap: bool
    link_remap_files: _containers.RepeatedScalarFieldContainer[str]
    replicable: bool
    own_network_namespace: bool
    namespace_ports: _containers.RepeatedScalarFieldContainer[int]
    ready_probe: str
    answer_check: str
    push_operation_id: str
    already_present: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., root_pid: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ..., criu_version: _Optional[str] = ..., kernel: _Optional[str] = ..., hostname: _Optional[str] = ..., raw_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., files: _Optional[_Iterable[_Union[ImageFile, _Mapping]]] = ..., checkpoint_seconds: _Optional[float] = ..., leave_running: _Optional[bool] = ..., new_bytes: _Optional[int] = ..., pinned: _Optional[bool] = ..., gpu: _Optional[_Union[GpuInfo, _Mapping]] = ..., hot: _Optional[bool] = ..., source_cgroup: _Optional[_Union[CgroupInfo, _Mapping]] = ..., damaged_chunks: _Optional[_Iterable[str]] = ..., operation_id: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., tcp_established: _Optional[bool] = ..., ext_unix_sk: _Optional[bool] = ..., link_remap: _Optional[bool] = ..., link_remap_files: _Optional[_Iterable[str]] = ..., replicable: _Optional[bool] = ..., own_network_namespace: _Optional[bool] = ..., namespace_ports: _Optional[_Iterable[int]] = ..., ready_probe: _Optional[str] = ..., answer_check: _Optional[str] = ..., push_operation_id: _Optional[str] = ..., already_present: _Optional[bool] = ...) -> None: ...

class CgroupInfo(_message.Message):
    __slots__ = ("path", "limits")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    path: str
    limits: _containers.ScalarMap[str, str]
    def __init__(self, path: _Optional[str] = ..., limits: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GpuDevice(_message.Message):
    __slots__ = ("index", "name", "uuid", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    uuid: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., uuid: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("driver_version", "cuda_driver_api", "devices", "cuda_pids", "vram_bytes")
    class VramBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_DRIVER_API_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CUDA_PIDS_FIELD_NUMBER: _ClassVar[int]
    VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    driver_version: str
    cuda_driver_api: int
    devices: _containers.RepeatedCompositeFieldContainer[GpuDevice]
    cuda_pids: _containers.RepeatedScalarFieldContainer[int]
    vram_bytes: _containers.ScalarMap[str, int]
    def __init__(self, driver_version: _Optional[str] = ..., cuda_driver_api: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[GpuDevice, _Mapping]]] = ..., cuda_pids: _Optional[_Iterable[int]] = ..., vram_bytes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("name", "remote")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    remote: bool
    def __init__(self, name: _Optional[str] = ..., remote: _Optional[bool] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots", "store_raw_bytes", "store_stored_bytes", "store_disk_bytes", "damaged_manifests")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    STORE_RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    store_raw_bytes: int
    store_stored_bytes: int
    store_disk_bytes: int
    damaged_manifests: _containers.RepeatedCompositeFieldContainer[DamagedManifest]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ..., store_raw_bytes: _Optional[int] = ..., store_stored_bytes: _Optional[int] = ..., store_disk_bytes: _Optional[int] = ..., damaged_manifests: _Optional[_Iterable[_Union[DamagedManifest, _Mapping]]] = ...) -> None: ...

class DamagedManifest(_message.Message):
    __slots__ = ("snapshot_id", "path", "moved_to", "problem")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MOVED_TO_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    path: str
    moved_to: str
    problem: str
    def __init__(self, snapshot_id: _Optional[str] = ..., path: _Optional[str] = ..., moved_to: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    def __init__(self, snapshot: _Optional[str] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("snapshot", "force")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    force: bool
    def __init__(self, snapshot: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ("id", "freed_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    freed_bytes: int
    def __init__(self, id: _Optional[str] = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class PinSnapshotRequest(_message.Message):
    __slots__ = ("snapshot", "pinned")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    pinned: bool
    def __init__(self, snapshot: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("snapshot", "drop")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    drop: bool
    def __init__(self, snapshot: _Optional[str] = ..., drop: _Optional[bool] = ...) -> None: ...

class PrefetchResponse(_message.Message):
    __slots__ = ("snapshot_id", "bytes", "hot_bytes", "seconds", "file_bytes")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    bytes: int
    hot_bytes: int
    seconds: float
    file_bytes: int
    def __init__(self, snapshot_id: _Optional[str] = ..., bytes: _Optional[int] = ..., hot_bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., file_bytes: _Optional[int] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("keep_last", "dry_run", "remote")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    dry_run: bool
    remote: bool
    def __init__(self, keep_last: _Optional[int] = ..., dry_run: _Optional[bool] = ..., remote: _Optional[bool] = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("expired_snapshots", "chunks", "bytes", "dry_run", "remote", "remote_snapshots", "stale_locks")
    EXPIRED_SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    STALE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    expired_snapshots: _containers.RepeatedScalarFieldContainer[str]
    chunks: int
    bytes: int
    dry_run: bool
    remote: bool
    remote_snapshots: int
    stale_locks: int
    def __init__(self, expired_snapshots: _Optional[_Iterable[str]] = ..., chunks: _Optional[int] = ..., bytes: _Optional[int] = ..., dry_run: _Optional[bool] = ..., remote: _Optional[bool] = ..., remote_snapshots: _Optional[int] = ..., stale_locks: _Optional[int] = ...) -> None: ...

class CheckStoreRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    def __init__(self, snapshot: _Optional[str] = ...) -> None: ...

class ChunkDamage(_message.Message):
    __slots__ = ("snapshot_id", "file", "offset", "chunk", "problem")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    file: str
    offset: int
    chunk: str
    problem: str
    def __init__(self, snapshot_id: _Optional[str] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ..., chunk: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class CheckStoreResponse(_message.Message):
    __slots__ = ("snapshots", "chunks_checked", "bytes_checked", "damage", "orphan_chunks", "damaged_manifests", "snapshots_gone")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DAMAGE_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_GONE_FIELD_NUMBER: _ClassVar[int]
    snapshots: int
    chunks_checked: int
    bytes_checked: int
    damage: _containers.RepeatedCompositeFieldContainer[ChunkDamage]
    orphan_chunks: int
    damaged_manifests: _containers.RepeatedCompositeFieldContainer[DamagedManifest]
    snapshots_gone: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshots: _Optional[int] = ..., chunks_checked: _Optional[int] = ..., bytes_checked: _Optional[int] = ..., damage: _Optional[_Iterable[_Union[ChunkDamage, _Mapping]]] = ..., orphan_chunks: _Optional[int] = ..., damaged_manifests: _Optional[_Iterable[_Union[DamagedManifest, _Mapping]]] = ..., snapshots_gone: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Check(_message.Message):
    __slots__ = ("name", "ok", "detail", "warning")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    warning: bool
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ..., warning: _Optional[bool] = ...) -> None: ...

class DaemonStatus(_message.Message):
    __slots__ = ("version", "pid", "uptime_seconds", "criu_path", "criu_version", "kernel", "state_dir", "state_dir_free_bytes", "snapshots", "operations_in_flight", "gpu_driver_version", "checks", "recovered_operations", "quarantined_manifests", "quarantined_chunks", "remote", "log_lines_dropped")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CRIU_PATH_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    GPU_DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    uptime_seconds: float
    criu_path: str
    criu_version: str
    kernel: str
    state_dir: str
    state_dir_free_bytes: int
    snapshots: int
    operations_in_flight: int
    gpu_driver_version: str
    checks: _containers.RepeatedCompositeFieldContainer[Check]
    recovered_operations: int
    quarantined_manifests: int
    quarantined_chunks: int
    remote: str
    log_lines_dropped: int
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., criu_path: _Optional[str] = ..., criu_version: _Optional[str] = ..., kernel: _Optional[str] = ..., state_dir: _Optional[str] = ..., state_dir_free_bytes: _Optional[int] = ..., snapshots: _Optional[int] = ..., operations_in_flight: _Optional[int] = ..., gpu_driver_version: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., recovered_operations: _Optional[int] = ..., quarantined_manifests: _Optional[int] = ..., quarantined_chunks: _Optional[int] = ..., remote: _Optional[str] = ..., log_lines_dropped: _Optional[int] = ...) -> None: ...

class CancelOperationRequest(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class CancelOperationResponse(_message.Message):
    __slots__ = ("cancelled", "detail")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    detail: str
    def __init__(self, cancelled: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    def __init__(self, snapshot: _Optional[str] = ...) -> None: ...

class PushResult(_message.Message):
    __slots__ = ("operation_id", "snapshot_id", "chunks", "uploaded_chunks", "uploaded_bytes", "already_there", "duration_seconds")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_THERE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    snapshot_id: str
    chunks: int
    uploaded_chunks: int
    uploaded_bytes: int
    already_there: bool
    duration_seconds: float
    def __init__(self, operation_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., chunks: _Optional[int] = ..., uploaded_chunks: _Optional[int] = ..., uploaded_bytes: _Optional[int] = ..., already_there: _Optional[bool] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class PushEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: PushResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[PushResult, _Mapping]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    def __init__(self, snapshot: _Optional[str] = ...) -> None: ...

class PullResult(_message.Message):
    __slots__ = ("operation_id", "snapshot_id", "chunks", "fetched_chunks", "fetched_bytes", "already_there", "duration_seconds")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_THERE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    snapshot_id: str
    chunks: int
    fetched_chunks: int
    fetched_bytes: int
    already_there: bool
    duration_seconds: float
    def __init__(self, operation_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., chunks: _Optional[int] = ..., fetched_chunks: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., already_there: _Optional[bool] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class PullEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: PullResult
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[PullResult, _Mapping]] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OperationInfo(_message.Message):
    __slots__ = ("operation_id", "kind", "pids", "snapshot_id", "running_seconds", "progress", "cancellable")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CANCELLABLE_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    kind: str
    pids: _containers.RepeatedScalarFieldContainer[int]
    snapshot_id: str
    running_seconds: float
    progress: Progress
    cancellable: bool
    def __init__(self, operation_id: _Optional[str] = ..., kind: _Optional[str] = ..., pids: _Optional[_Iterable[int]] = ..., snapshot_id: _Optional[str] = ..., running_seconds: _Optional[float] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., cancellable: _Optional[bool] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[OperationInfo]
    def __init__(self, operations: _Optional[_Iterable[_Union[OperationInfo, _Mapping]]] = ...) -> None: ...

class ExportSnapshotRequest(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    def __init__(self, snapshot: _Optional[str] = ...) -> None: ...

class StreamData(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ExitStatus(_message.Message):
    __slots__ = ("known", "code", "signal")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    known: bool
    code: int
    signal: int
    def __init__(self, known: _Optional[bool] = ..., code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class InstanceProcess(_message.Message):
    __slots__ = ("pid", "start_time", "gpu_memory_bytes")
    class GpuMemoryBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    start_time: float
    gpu_memory_bytes: _containers.ScalarMap[str, int]
    def __init__(self, pid: _Optional[int] = ..., start_time: _Optional[float] = ..., gpu_memory_bytes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("id", "snapshot_id", "snapshot_name", "state", "root_pid", "processes", "gpus", "cgroup", "log_path", "published", "created", "ready", "ended", "exit_status", "operation_id", "detail", "ready_seconds", "sandbox")
    ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROOT_PID_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    READY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    id: str
    snapshot_id: str
    snapshot_name: str
    state: InstanceState
    root_pid: int
    processes: _containers.RepeatedCompositeFieldContainer[InstanceProcess]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    cgroup: str
    log_path: str
    published: _containers.RepeatedCompositeFieldContainer[PublishedPort]
    created: _timestamp_pb2.Timestamp
    ready: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    exit_status: ExitStatus
    operation_id: str
    detail: str
    ready_seconds: float
    sandbox: Sandbox
    def __init__(self, id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., snapshot_name: _Optional[str] = ..., state: _Optional[_Union[InstanceState, str]] = ..., root_pid: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[InstanceProcess, _Mapping]]] = ..., gpus: _Optional[_Iterable[str]] = ..., cgroup: _Optional[str] = ..., log_path: _Optional[str] = ..., published: _Optional[_Iterable[_Union[PublishedPort, _Mapping]]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_status: _Optional[_Union[ExitStatus, _Mapping]] = ..., operation_id: _Optional[str] = ..., detail: _Optional[str] = ..., ready_seconds: _Optional[float] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("pid", "cgroup")
    PID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    pid: int
    cgroup: str
    def __init__(self, pid: _Optional[int] = ..., cgroup: _Optional[str] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class GetInstanceRequest(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: str
    def __init__(self, instance: _Optional[str] = ...) -> None: ...

class StopInstanceRequest(_message.Message):
    __slots__ = ("instance", "grace_seconds")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    instance: str
    grace_seconds: int
    def __init__(self, instance: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "stream_id")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    stream_id: str
    def __init__(self, after_sequence: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class OperationEvent(_message.Message):
    __slots__ = ("operation_id", "kind", "state", "progress", "error", "exit_code", "message")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    kind: str
    state: str
    progress: Progress
    error: str
    exit_code: int
    message: str
    def __init__(self, operation_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "time", "stream_id", "operation", "instance")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    stream_id: str
    operation: OperationEvent
    instance: Instance
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream_id: _Optional[str] = ..., operation: _Optional[_Union[OperationEvent, _Mapping]] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...
