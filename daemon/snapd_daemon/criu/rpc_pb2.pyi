from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReqType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMPTY: _ClassVar[ReqType]
    DUMP: _ClassVar[ReqType]
    RESTORE: _ClassVar[ReqType]
    CHECK: _ClassVar[ReqType]
    PRE_DUMP: _ClassVar[ReqType]
    PAGE_SERVER: _ClassVar[ReqType]
    NOTIFY: _ClassVar[ReqType]
    CPUINFO_DUMP: _ClassVar[ReqType]
    CPUINFO_CHECK: _ClassVar[ReqType]
    FEATURE_CHECK: _ClassVar[ReqType]
    VERSION: _ClassVar[ReqType]
    WAIT_PID: _ClassVar[ReqType]
    PAGE_SERVER_CHLD: _ClassVar[ReqType]

class CgMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IGNORE: _ClassVar[CgMode]
    CG_NONE: _ClassVar[CgMode]
    PROPS: _ClassVar[CgMode]
    SOFT: _ClassVar[CgMode]
    FULL: _ClassVar[CgMode]
    STRICT: _ClassVar[CgMode]
    DEFAULT: _ClassVar[CgMode]

class NetworkLock(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IPTABLES: _ClassVar[NetworkLock]
    NFTABLES: _ClassVar[NetworkLock]
    SKIP: _ClassVar[NetworkLock]
EMPTY: ReqType
DUMP: ReqType
RESTORE: ReqType
CHECK: ReqType
PRE_DUMP: ReqType
PAGE_SERVER: ReqType
NOTIFY: ReqType
CPUINFO_DUMP: ReqType
CPUINFO_CHECK: ReqType
FEATURE_CHECK: ReqType
VERSION: ReqType
WAIT_PID: ReqType
PAGE_SERVER_CHLD: ReqType
IGNORE: CgMode
CG_NONE: CgMode
PROPS: CgMode
SOFT: CgMode
FULL: CgMode
STRICT: CgMode
DEFAULT: CgMode
IPTABLES: NetworkLock
NFTABLES: NetworkLock
SKIP: NetworkLock

class InheritFd(_message.Message):
    __slots__ = ("key", "fd")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    key: str
    fd: int
    def __init__(self, key: _Optional[str] = ..., fd: _Optional[int] = ...) -> None: ...

class JoinNamespace(_message.Message):
    __slots__ = ("ns", "ns_file", "extra_opt")
    NS_FIELD_NUMBER: _ClassVar[int]
    NS_FILE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_OPT_FIELD_NUMBER: _ClassVar[int]
    ns: str
    ns_file: str
    extra_opt: str
    def __init__(self, ns: _Optional[str] = ..., ns_file: _Optional[str] = ..., extra_opt: _Optional[str] = ...) -> None: ...

class Opts(_message.Message):
    __slots__ = ("images_dir_fd", "pid", "leave_running", "ext_unix_sk", "tcp_established", "shell_job", "file_locks", "log_level", "log_file", "notify_scripts", "root", "work_dir_fd", "link_remap", "rst_sibling", "inherit_fd", "auto_ext_mnt", "ext_sharing", "ext_masters", "manage_cgroups_mode", "external", "join_ns", "timeout", "lazy_pages", "tcp_close", "network_lock", "leave_stopped")
    IMAGES_DIR_FD_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    EXT_UNIX_SK_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    SHELL_JOB_FIELD_NUMBER: _ClassVar[int]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOG_FILE_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_SCRIPTS_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    WORK_DIR_FD_FIELD_NUMBER: _ClassVar[int]
    LINK_REMAP_FIELD_NUMBER: _ClassVar[int]
    RST_SIBLING_FIELD_NUMBER: _ClassVar[int]
    INHERIT_FD_FIELD_NUMBER: _ClassVar[int]
    AUTO_EXT_MNT_FIELD_NUMBER: _ClassVar[int]
    EXT_SHARING_FIELD_NUMBER: _ClassVar[int]
    EXT_MASTERS_FIELD_NUMBER: _ClassVar[int]
    MANAGE_CGROUPS_MODE_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    JOIN_NS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    TCP_CLOSE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LOCK_FIELD_NUMBER: _ClassVar[int]
    LEAVE_STOPPED_FIELD_NUMBER: _ClassVar[int]
    images_dir_fd: int
    pid: int
    leave_running: bool
    ext_unix_sk: bool
    tcp_established: bool
    shell_job: bool
    file_locks: bool
    log_level: int
    log_file: str
    notify_scripts: bool
    root: str
    work_dir_fd: int
    link_remap: bool
    rst_sibling: bool
    inherit_fd: _containers.RepeatedCompositeFieldContainer[InheritFd]
    auto_ext_mnt: bool
    ext_sharing: bool
    ext_masters: bool
    manage_cgroups_mode: CgMode
    external: _containers.RepeatedScalarFieldContainer[str]
    join_ns: _containers.RepeatedCompositeFieldContainer[JoinNamespace]
    timeout: int
    lazy_pages: bool
    tcp_close: bool
    network_lock: NetworkLock
    leave_stopped: bool
    def __init__(self, images_dir_fd: _Optional[int] = ..., pid: _Optional[int] = ..., leave_running: _Optional[bool] = ..., ext_unix_sk: _Optional[bool] = ..., tcp_established: _Optional[bool] = ..., shell_job: _Optional[bool] = ..., file_locks: _Optional[bool] = ..., log_level: _Optional[int] = ..., log_file: _Optional[str] = ..., notify_scripts: _Optional[bool] = ..., root: _Optional[str] = ..., work_dir_fd: _Optional[int] = ..., link_remap: _Optional[bool] = ..., rst_sibling: _Optional[bool] = ..., inherit_fd: _Optional[_Iterable[_Union[InheritFd, _Mapping]]] = ..., auto_ext_mnt: _Optional[bool] = ..., ext_sharing: _Optional[bool] = ..., ext_masters: _Optional[bool] = ..., manage_cgroups_mode: _Optional[_Union[CgMode, str]] = ..., external: _Optional[_Iterable[str]] = ..., join_ns: _Optional[_Iterable[_Union[JoinNamespace, _Mapping]]] = ..., timeout: _Optional[int] = ..., lazy_pages: _Optional[bool] = ..., tcp_close: _Optional[bool] = ..., network_lock: _Optional[_Union[NetworkLock, str]] = ..., leave_stopped: _Optional[bool] = ...) -> None: ...

class DumpResp(_message.Message):
    __slots__ = ("restored",)
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    restored: bool
    def __init__(self, restored: _Optional[bool] = ...) -> None: ...

class RestoreResp(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class Notify(_message.Message):
    __slots__ = ("script", "pid")
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    script: str
    pid: int
    def __init__(self, script: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Req(_message.Message):
    __slots__ = ("type", "opts", "notify_success", "keep_open")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTS_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    KEEP_OPEN_FIELD_NUMBER: _ClassVar[int]
    type: ReqType
    opts: Opts
    notify_success: bool
    keep_open: bool
    def __init__(self, type: _Optional[_Union[ReqType, str]] = ..., opts: _Optional[_Union[Opts, _Mapping]] = ..., notify_success: _Optional[bool] = ..., keep_open: _Optional[bool] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("major_number", "minor_number", "gitid", "sublevel", "extra", "name")
    MAJOR_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MINOR_NUMBER_FIELD_NUMBER: _ClassVar[int]
    GITID_FIELD_NUMBER: _ClassVar[int]
    SUBLEVEL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    major_number: int
    minor_number: int
    gitid: str
    sublevel: int
    extra: int
    name: str
    def __init__(self, major_number: _Optional[int] = ..., minor_number: _Optional[int] = ..., gitid: _Optional[str] = ..., sublevel: _Optional[int] = ..., extra: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Resp(_message.Message):
    __slots__ = ("type", "success", "dump", "restore", "notify", "cr_errno", "cr_errmsg", "version", "status")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DUMP_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    CR_ERRNO_FIELD_NUMBER: _ClassVar[int]
    CR_ERRMSG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    type: ReqType
    success: bool
    dump: DumpResp
    restore: RestoreResp
    notify: Notify
    cr_errno: int
    cr_errmsg: str
    version: Version
    status: int
    def __init__(self, type: _Optional[_Union[ReqType, str]] = ..., success: _Optional[bool] = ..., dump: _Optional[_Union[DumpResp, _Mapping]] = ..., restore: _Optional[_Union[RestoreResp, _Mapping]] = ..., notify: _Optional[_Union[Notify, _Mapping]] = ..., cr_errno: _Optional[int] = ..., cr_errmsg: _Optional[str] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., status: _Optional[int] = ...) -> None: ...
