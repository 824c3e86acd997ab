"""What a manifest must say about itself to be used: cheap checks that need no chunk and no image.

A seal (seal.py) proves that a manifest is what was written; these checks refuse
one that cannot be right however it was written (a manifest sealed anew after an
edit, one written before seals, a hostile import): every image file name a plain
name (or ``trimmed/`` and one), so that a restore writes nowhere else; each file's
chunks cover exactly its size; pids where the kernel has them; and the stored
restore cut (criu/trim.py) inside the snapshot's images and memory: each injected
span page-aligned, within its pages image and within a region of its process,
the spans of one image disjoint, and each image's bytes exactly its trimmed copy
plus its injected spans.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict

from snapd_daemon.criu.trim import TRIMMED, InjectSpan
from snapd_daemon.host.processes import MAX_PID
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.model import ZERO_CHUNK

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_RE = re.compile(rf"(?:{re.escape(TRIMMED)})?[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
_CHUNK_RE = re.compile(r"[0-9a-f]{64}")
# far above the checkpoint's 2 MiB pieces: a bound on the buffer one chunk read takes
MAX_CHUNK = 64 << 20
_PAGE = 4096
_AFTER_ANY = 1 << 64  # sorts after every region end: bisect finds the last region starting at or before


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inconsistency(m: Manifest) -> str:
    """Why ``m`` cannot be right ("" when every check passes)."""
    return _identity(m) or _processes(m) or _files(m) or _cut(m)


def _identity(m: Manifest) -> str:
    if not isinstance(m.id, str) or not ID_RE.fullmatch(m.id):
        return f"id {str(m.id)[:80]!r} is not a snapshot id"
    wrong = next((f for f in ("name", "hostname", "kernel", "criu_version") if not isinstance(getattr(m, f), str)),
                 None)
    if wrong:
        return f"{wrong} is not a string"
    if not isinstance(m.labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in m.labels.items()):
        return "labels are not a map of strings"
    if not isinstance(m.created, int | float) or isinstance(m.created, bool):
        return "created is not a time"
    return ""


def _processes(m: Manifest) -> str:
    if not m.processes:
        return "it lists no process"
    pids = m.pids
    bad = next((p for p in m.processes if not (_is_int(p.pid) and 0 < p.pid <= MAX_PID and _is_int(p.ppid)
                                                and 0 <= p.ppid <= MAX_PID)), None)
    if bad is not None:
        return f"process {str(bad.pid)[:20]} (parent {str(bad.ppid)[:20]}) is not a pid of 1..{MAX_PID}"
    if len(set(pids)) != len(pids):
        return "a pid is listed twice"
    if m.root_pid not in pids:
        return f"root pid {str(m.root_pid)[:20]} is not one of its processes"
    stray = next((k for k, v in m.ns_pids.items() if k not in pids or not 0 < v <= MAX_PID), None)
    if stray is not None:
        return f"pid {stray} of ns_pids is not one of its processes, or names no pid"
    return ""


def _files(m: Manifest) -> str:
    names = set()
    for entry in m.files:
        if not isinstance(entry.name, str) or not _FILE_RE.fullmatch(entry.name):
            return f"image file name {str(entry.name)[:80]!r} is not a plain file name"
        if entry.name in names:
            return f"image file {entry.name} is listed twice"
        names.add(entry.name)
        if not _is_int(entry.size_bytes) or entry.size_bytes < 0:
            return f"image file {entry.name} has size {str(entry.size_bytes)[:20]}"
        covered = 0
        for ref in entry.chunks:
            if not isinstance(ref.id, str) or (ref.id != ZERO_CHUNK and not _CHUNK_RE.fullmatch(ref.id)):
                return f"image file {entry.name} names chunk {str(ref.id)[:80]!r}, which is no BLAKE3 digest"
            if not _is_int(ref.length) or not 0 < ref.length <= MAX_CHUNK:
                return f"chunk {ref.id or '(zeros)'} of {entry.name} has length {str(ref.length)[:20]}"
            covered += ref.length
        if covered != entry.size_bytes:
            return f"the chunks of image file {entry.name} hold {covered} bytes, its size is {entry.size_bytes}"
    return ""


def _cut(m: Manifest) -> str:
    layout = m.trimmed
    if layout is None:
        return ""
    sizes = {e.name: e.size_bytes for e in m.files}
    image_pids = {m.image_pid(p) for p in m.pids}
    if not set(layout.regions) <= image_pids:
        return f"the restore cut has regions of pid(s) {sorted(set(layout.regions) - image_pids)[:4]}, not its own"
    regions = {pid: sorted(spans) for pid, spans in layout.regions.items()}
    by_file: dict[str, list[InjectSpan]] = defaultdict(list)
    for s in layout.inject:
        problem = _span(s, sizes, image_pids, regions.get(s.pid, []))
        if problem:
            return f"the span of {s.length} bytes at offset {s.offset} of {s.pages_file} (pid {s.pid}) {problem}"
        by_file[s.pages_file].append(s)
    for name, spans in by_file.items():
        spans.sort(key=lambda s: s.offset)
        overlap = next((b for a, b in zip(spans, spans[1:], strict=False) if a.offset + a.length > b.offset), None)
        if overlap is not None:
            return f"injected spans of {name} overlap at offset {overlap.offset}"
    for name, size in sizes.items():
        if name.startswith(TRIMMED):
            original = name.removeprefix(TRIMMED)
            if original.startswith("pages-"):
                injected = sum(s.length for s in by_file.get(original, []))
                if sizes.get(original) != size + injected:
                    return (f"{original} holds {sizes.get(original)} bytes, but its trimmed copy ({size}) and its "
                            f"injected spans ({injected}) make {size + injected}")
    return ""


def _span(s: InjectSpan, sizes: dict[str, int], pids: set[int], regions: list[tuple[int, int]]) -> str:
    """Why span ``s`` cannot be right, given the image sizes, the pids and its process's
    regions (sorted); "" when it can."""
    if not all(_is_int(v) for v in (s.pid, s.vaddr, s.offset, s.length)):
        return "has a field that is not a number"
    if s.pages_file not in sizes or not s.pages_file.startswith("pages-"):
        return "names a pages image the snapshot lacks"
    if s.pid not in pids:
        return "names a process the snapshot lacks"
    if s.length <= 0 or s.offset < 0 or (s.vaddr | s.offset | s.length) % _PAGE:
        return "is not whole pages"
    if s.offset + s.length > sizes[s.pages_file]:
        return f"ends beyond the image ({sizes[s.pages_file]} bytes)"
    i = bisect.bisect_right(regions, (s.vaddr, _AFTER_ANY)) - 1
    if i < 0 or s.vaddr >= regions[i][1]:
        return f"at {s.vaddr:#x} lies outside the regions recorded for its process"
    # the cut joins spans that follow each other, across regions that touch (criu/trim.py)
    end = regions[i][1]
    while end < s.vaddr + s.length and i + 1 < len(regions) and regions[i + 1][0] == end:
        i += 1
        end = regions[i][1]
    if s.vaddr + s.length > end:
        return f"at {s.vaddr:#x} lies outside the regions recorded for its process"
    return ""
