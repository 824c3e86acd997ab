"""The record of one snapshot: what was checkpointed, where, how big, and which chunks hold its files.

Serialised as sealed JSON (``to_json``; seal.py defines the seal and reads it back:
``seal.open_manifest`` is the only way from bytes to a Manifest, ``from_dict`` its
last step); the store keeps those bytes without reading them. FORMAT_VERSION
changes only with an incompatible change.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import blake3

from snapd_daemon.criu.trim import TRIMMED, TrimmedLayout
from snapd_daemon.host.cgroups import CgroupRecord
from snapd_daemon.host.filepages import FilePages
from snapd_daemon.host.gpu import GpuRecord
from snapd_daemon.host.probes import AnswerCheck, ReadyProbe
from snapd_daemon.host.processes import ProcessRecord
from snapd_daemon.host.stdio import OutwardEnd
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef, chunk_offsets

# 2: ``files`` may hold trimmed copies (``trimmed/...``, see ``trimmed``), which a
# reader of version 1 would write out as if they were CRIU images
# 3: chunks may be stored as byte planes (store/codec.py, codec 2), which a reader of
# version 2 cannot decode and would put in quarantine as corrupt
FORMAT_VERSION = 3


def new_snapshot_id() -> str:
    """Sortable and unique: UTC creation second plus 48 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(6)


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields by name (json's ``default`` for the dataclasses a manifest nests);
    a dict keyed by numbers (pids) gets string keys here, as JSON has them, so that keys
    sort as they do when the text is read back (seal.py's canonical form)."""
    return {name: _text_keys(getattr(record, name)) for name in _field_names(type(record))}


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
        return {str(k): v for k, v in value.items()}
    return value


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    if not is_dataclass(kind):
        raise TypeError(f"a manifest holds a {kind.__name__}, which has no JSON form")
    return tuple(f.name for f in fields(kind))


@dataclass(frozen=True)
class ImageEntry:
    name: str
    size_bytes: int
    chunks: tuple[ChunkRef, ...] = ()


@dataclass
class Manifest:
    id: str
    name: str
    labels: dict[str, str]
    created: float
    root_pid: int
    processes: list[ProcessRecord]
    criu_version: str
    kernel: str
    hostname: str
    shell_job: bool
    leave_running: bool
    files: list[ImageEntry] = field(default_factory=list)
    # compressed bytes of this snapshot's chunks (shared ones included), and of
    # the chunks it was first to add to the store
    stored_bytes: int = 0
    new_bytes: int = 0
    checkpoint_seconds: float = 0.0
    gpu: GpuRecord | None = None
    # the cgroup v2 group of the root process at checkpoint, with its limits
    cgroup: CgroupRecord | None = None
    # stdio pipes/sockets whose other end was outside the tree: redirected at restore
    outward_stdio: list[OutwardEnd] = field(default_factory=list)
    # dumped with established TCP connections / unix sockets to outside peers (CRIU options)
    tcp_established: bool = False
    ext_unix_sk: bool = False
    # dumped with CRIU's link_remap: the links CRIU made (absolute paths), which hold the
    # unlinked open files for every restore and are removed with the snapshot
    link_remap: bool = False
    link_remap_files: list[str] = field(default_factory=list)
    # the root was the init of a pid namespace of its own: pid at checkpoint -> pid inside
    # it ({}: the tree shared the host's). Such a snapshot restores any number of times at
    # once, each copy in a fresh pid namespace; its images name processes by the inside pids.
    ns_pids: dict[int, int] = field(default_factory=dict)
    # the tree had a network namespace of its own: the TCP ports listened on inside it,
    # which each restored copy publishes on a host port
    own_netns: bool = False
    ns_ports: list[int] = field(default_factory=list)
    # the tree had a mount namespace of its own (`snapd run`: private, with a /proc of its
    # pid namespace), dumped by CRIU; each restored copy gets a fresh one
    own_mntns: bool = False
    # the fast restore's cut, made at checkpoint (criu/trim.py); its trimmed images are
    # the ``files`` named "trimmed/..." (None: made by an older snapd, or injection off)
    trimmed: TrimmedLayout | None = None
    # the file pages the tree had mapped in, most needed first: what a restore reads
    # ahead (host/filepages.py; empty: none recorded)
    file_pages: list[FilePages] = field(default_factory=list)
    # what a restore waits for before the tree counts as ready, and the request (with the
    # answer it got at checkpoint) a restore with verify sends again (docs/readiness.md)
    ready_probe: ReadyProbe | None = None
    answer_check: AnswerCheck | None = None
    format_version: int = FORMAT_VERSION

    @property
    def raw_bytes(self) -> int:
        """Bytes of the CRIU images (the trimmed copies left out)."""
        return sum(f.size_bytes for f in self.files if not f.name.startswith(TRIMMED))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    @property
    def replicable(self) -> bool:
        """Restores get a pid namespace of their own (any number of them at once)."""
        return bool(self.ns_pids)

    def image_pid(self, pid: int) -> int:
        """The pid CRIU's images name the process that had ``pid`` at checkpoint by."""
        return self.ns_pids.get(pid, pid)

    def chunk_ids(self) -> set[str]:
        return {c.id for f in self.files for c in f.chunks if c.id != ZERO_CHUNK}

    def locate(self, cid: str) -> tuple[str, int]:
        """(file, offset) of the first place chunk ``cid`` holds ("", 0 if none)."""
        for entry in self.files:
            for offset, ref in chunk_offsets(entry.chunks):
                if ref.id == cid:
                    return entry.name, offset
        return "", 0

    def to_json(self, sign: Callable[[str], dict[str, str]] | None = None) -> str:
        """Sealed JSON: the canonical content (compact, keys sorted, ASCII; seal.py) with
        its BLAKE3 ``seal`` added, and with ``sign`` the ``signature`` it makes of the seal.
        Written at every commit, while the client waits: for an 8B server's snapshot
        (18,000 chunks, a few thousand injection spans) ``asdict`` plus an indented dump
        took 0.3-0.4 s on the CI VM, this 0.08 s (json's C encoder, which an indent turns
        off, meets each record once, in ``_fields``)."""
        body = json.dumps(self, default=_fields, sort_keys=True, separators=(",", ":"))
        seal = blake3.blake3(body.encode()).hexdigest()
        signed = f',"signature":{json.dumps(sign(seal), sort_keys=True, separators=(",", ":"))}' if sign else ""
        return f'{body[:-1]},"seal":"{seal}"{signed}}}'

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> Manifest:
        """A manifest's JSON object (its seal checked already: seal.py) as a record. Fields
        this version does not know are ignored (a newer snapd may add some); a newer
        ``format_version`` is refused (ValueError); a missing field raises KeyError."""
        data = dict(content)
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"format_version {data['format_version']} is newer than this snapd's {FORMAT_VERSION}")
        data["processes"] = [_known(ProcessRecord, {**p, "cmdline": tuple(p["cmdline"])}) for p in data["processes"]]
        data["files"] = [
            ImageEntry(f["name"], f["size_bytes"], tuple(ChunkRef(**c) for c in f["chunks"])) for f in data["files"]
        ]
        if data.get("gpu"):
            data["gpu"] = GpuRecord.from_dict(data["gpu"])
        if data.get("cgroup"):
            data["cgroup"] = CgroupRecord.from_dict(data["cgroup"])
        data["ns_pids"] = {int(k): int(v) for k, v in (data.get("ns_pids") or {}).items()}
        data["outward_stdio"] = [_known(OutwardEnd, e) for e in data.get("outward_stdio", [])]
        data["file_pages"] = FilePages.parse(data.get("file_pages"))
        if data.get("trimmed"):
            data["trimmed"] = TrimmedLayout.from_dict(data["trimmed"])
        if data.get("ready_probe"):
            data["ready_probe"] = _known(ReadyProbe, data["ready_probe"])
        if data.get("answer_check"):
            data["answer_check"] = _known(AnswerCheck, data["answer_check"])
        return _known(cls, data)


T = TypeVar("T")


def _known(kind: type[T], data: dict[str, Any]) -> T:
    """``kind(**data)`` with the keys ``kind`` does not have left out; KeyError naming the
    first field without a default that ``data`` lacks."""
    known = fields(kind)  # type: ignore[arg-type]
    for f in known:
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING:
            raise KeyError(f.name)
    names = {f.name for f in known}
    return kind(**{k: v for k, v in data.items() if k in names})
