"""Manifest corruptions (issue 23), shared by tests/test_manifest_integrity.py and
`scripts/faults.py --campaign manifests`: damaged copies of one real snapshot's manifest,
each taken in by a daemon the way a user would (an import of an export stream whose manifest was
changed, or the file in the store changed under a stopped daemon), then restored if it
was taken in, with these invariants after each:

- no restore runs with wrong memory (the workload reports its memory's digest);
- no healthy chunk goes to quarantine (the quarantine holds no chunk; a second
  snapshot sharing the chunks restores with the right memory at the end);
- every refusal names the manifest.

Corruptions: random bit flips anywhere in the manifest's bytes, and semantic edits of
valid JSON (an injected span's offset, length or address moved by a page, a chunk's
length as in the issue, a pid, a chunk id swapped for another of the snapshot, a file's
size), each with its old seal (the seal must catch it) and sealed anew ("resealed", a
forgery: the consistency checks must catch it, except for FORGERIES, which only a
signature can; those are counted apart).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Daemon, Workloads, ask, gone, wait_for
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.snapshots.seal import canonical, digest
from snapd_daemon.store import bundle

PAGE = 4096
SEMANTIC = ("span-offset", "span-length", "span-address", "chunk-length", "pid", "root-pid", "chunk-id",
            "size", "zero-fill")
# edits sealed anew that no check short of a signature can tell: another chunk of the same
# length named in place of one (an import still refuses it: the stream's chunks differ)
FORGERIES = ("chunk-id/resealed",)


def largest_span(content: dict[str, Any]) -> dict[str, Any]:
    spans = (content.get("trimmed") or {}).get("inject") or []
    assert spans, "the snapshot has no injected span (inject_min_bytes off?)"
    return max(spans, key=lambda s: s["length"])


def _pages_chunks(content: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for f in content["files"] if f["name"].startswith("pages-") for c in f["chunks"] if c["id"]]


def edit(content: dict[str, Any], kind: str, rng: random.Random) -> None:
    """Apply semantic edit ``kind`` to a manifest's JSON object in place."""
    if kind == "span-offset":
        largest_span(content)["offset"] += PAGE
    elif kind == "span-length":
        largest_span(content)["length"] -= PAGE
    elif kind == "span-address":
        largest_span(content)["vaddr"] += PAGE * rng.choice((-1, 1))
    elif kind == "chunk-length":
        ref = next(c for c in _pages_chunks(content) if c["length"] == 2 << 20)
        ref["length"] = 2087152  # the flipped bit: 2097152 -> 2087152
    elif kind == "pid":
        content["processes"][-1]["pid"] += 1
    elif kind == "root-pid":
        content["root_pid"] += 1
    elif kind == "chunk-id":
        refs = [c for c in _pages_chunks(content) if c["length"] == 2 << 20]
        first, other = rng.sample(refs, 2)
        first["id"] = other["id"]
    elif kind == "zero-fill":
        largest_span(content)["zero_fill"] ^= True
    elif kind == "size":
        entry = next(f for f in content["files"] if f["name"].startswith("pages-"))
        entry["size_bytes"] += PAGE
    else:
        raise ValueError(kind)


def reseal(content: dict[str, Any]) -> bytes:
    body = {k: v for k, v in content.items() if k not in ("seal", "signature")}
    return json.dumps({**body, "seal": digest(canonical(body))}).encode()


def corruptions(manifest: bytes, flips: int, seed: int) -> list[tuple[str, bytes]]:
    """(kind, damaged manifest bytes): ``flips`` random single-bit flips, then every semantic
    edit with its stale seal and sealed anew."""
    rng = random.Random(seed)
    out = []
    for _ in range(flips):
        data = bytearray(manifest)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        out.append(("bit-flip", bytes(data)))
    for kind in SEMANTIC:
        stale = json.loads(manifest)
        edit(stale, kind, rng)
        out.append((kind, json.dumps(stale).encode()))
        fresh = json.loads(manifest)
        edit(fresh, kind, rng)
        out.append((f"{kind}/resealed", reseal(fresh)))
    return out


def with_manifest(stream: bytes, manifest: bytes) -> bytes:
    """The export stream ``stream`` with its manifest replaced (chunks and END rewritten)."""
    reader = bundle.Reader([stream])
    reader.manifest()
    writer = bundle.Writer()
    pieces = [*writer.header(manifest)]
    for cid, stored in reader.chunks():
        pieces += writer.chunk(cid, stored)
    pieces += writer.end()
    return b"".join(bytes(p) for p in pieces)


@dataclass
class Outcome:
    """How one corruption ended: "refused" (at import or load), "refused-at-restore",
    "restored-right" or "wrong-memory"; and what broke an invariant."""

    kind: str
    outcome: str
    error_class: str = ""
    violations: list[str] = field(default_factory=list)


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.outcomes.append(o)

    def counts(self, resealed: bool | None = None) -> Counter[str]:
        return Counter(o.outcome for o in self.outcomes
                       if resealed is None or o.kind.endswith("/resealed") == resealed)

    @property
    def violations(self) -> list[str]:
        return [f"{o.kind}: {v}" for o in self.outcomes for v in o.violations]

    def table(self) -> str:
        kinds = sorted({o.kind for o in self.outcomes})
        lines = []
        for kind in kinds:
            c = Counter(o.outcome for o in self.outcomes if o.kind == kind)
            lines.append(f"{kind:<28} " + " ".join(f"{k}={v}" for k, v in sorted(c.items())))
        return "\n".join(lines)


def quarantined_chunks(daemon: Daemon) -> list[str]:
    root = daemon.state_dir / "quarantine" / "chunks"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _refusal(kind: str, err: SnapdClientError, stage: str) -> Outcome:
    o = Outcome(kind, "refused" if stage == "load" else "refused-at-restore", err.error_class)
    if "manifest" not in err.message:
        o.violations.append(f"the {stage} refusal does not name the manifest: {err.error_class}: {err.message}")
    return o


def _restore_and_check(c: SnapdClient, kind: str, ref: str, report: Path, expected: str) -> Outcome:
    """Restore ``ref``; the outcome by the restored memory's digest."""
    try:
        result = c.restore(ref)
    except SnapdClientError as err:
        return _refusal(kind, err, "restore")
    try:
        got = ask(result.root_pid, report)[1]
    except AssertionError:
        got = "(no report)"
    for pid in result.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(gone(p) for p in result.pids), 30, "the restored tree to end")
    if got == expected:
        return Outcome(kind, "restored-right")
    return Outcome(kind, "wrong-memory", violations=[f"restored with memory digest {got}, not {expected}"])


def via_import(target: Daemon, stream: bytes, cases: list[tuple[str, bytes]], report: Path, expected: str,
               tally: Tally, progress: Callable[[Outcome], None] = lambda _o: None) -> None:
    """Each corruption as an import into ``target`` (a store without the snapshot), restored
    (then deleted) when taken in."""
    with target.client() as c:
        for kind, manifest in cases:
            try:
                data = with_manifest(stream, manifest)
                snap = c.import_snapshot(data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
            except SnapdClientError as err:
                o = _refusal(kind, err, "load")
            else:
                o = _restore_and_check(c, kind, snap.id, report, expected)
                c.delete(snap.id)
            if quarantined_chunks(target):
                o.violations.append(f"chunk(s) quarantined: {quarantined_chunks(target)}")
            tally.add(o)
            progress(o)


def via_store(daemon: Daemon, snapshot_id: str, cases: list[tuple[str, bytes]], report: Path, expected: str,
              tally: Tally, progress: Callable[[Outcome], None] = lambda _o: None) -> None:
    """Each corruption written over the manifest file of ``snapshot_id`` in ``daemon``'s store
    while it is stopped; after its start, a refusal must also show in `list` and `fsck`.
    The intact file is put back after each."""
    path = daemon.state_dir / "manifests" / f"{snapshot_id}.json"
    intact = path.read_bytes()
    quarantined = daemon.state_dir / "quarantine" / "manifests" / path.name
    for kind, manifest in cases:
        daemon.stop()
        path.write_bytes(manifest)
        daemon.start()
        with daemon.client() as c:
            if snapshot_id in {d.snapshot_id for d in c.list().damaged_manifests}:
                err = _error(lambda: c.restore(snapshot_id))  # noqa: B023
                o = _refusal(kind, err, "load") if err else Outcome(kind, "restored-listed-damaged",
                                                                    violations=["a damaged manifest restored"])
                if not quarantined.exists():
                    o.violations.append("listed as damaged, but not in quarantine")
            else:
                o = _restore_and_check(c, kind, snapshot_id, report, expected)
        if quarantined_chunks(daemon):
            o.violations.append(f"chunk(s) quarantined: {quarantined_chunks(daemon)}")
        tally.add(o)
        progress(o)
        daemon.stop()
        quarantined.unlink(missing_ok=True)
        quarantined.with_name(f"{path.name}.error").unlink(missing_ok=True)
        path.write_bytes(intact)
        daemon.start()


def _error(call: Callable[[], object]) -> SnapdClientError | None:
    try:
        call()
    except SnapdClientError as err:
        return err
    return None


def campaign(daemon: Daemon, workloads: Workloads, root: Path, flips: int, seed: int, on_disk: int = 3,
             progress: Callable[[Outcome], None] = lambda _o: None) -> Tally:
    """The whole campaign on ``daemon`` (an empty store): a workload holding 8 MiB of random
    memory, two snapshots of it sharing every chunk, the first one's manifest damaged
    ``flips`` times at random plus every semantic edit (stale and resealed), each imported
    into a second daemon under ``root``; the last ``on_disk`` of the bit flips and stale
    offset/length edits also written into ``daemon``'s store. Finally the second snapshot
    is restored: a wrong digest there is a violation ("sharing")."""
    pid, report = workloads.start("memhold.py", "8")
    expected = ask(pid, report)[1]
    with daemon.client() as c:
        first = c.checkpoint(pid, leave_running=True)
        sharing = c.checkpoint(pid)
        sink = io.BytesIO()
        c.export_snapshot(first.id, sink)
    stream = sink.getvalue()
    cases = corruptions(bundle.Reader([stream]).manifest(), flips, seed)
    tally = Tally()
    (root / "second").mkdir()
    second = Daemon(root / "second")
    try:
        via_import(second.start(), stream, cases, report, expected, tally, progress)
    finally:
        second.close()
    stored = [case for case in cases if case[0] in ("bit-flip", "span-offset", "chunk-length")][-on_disk:]
    via_store(daemon, first.id, stored, report, expected, tally, progress)
    with daemon.client() as c:
        o = _restore_and_check(c, "sharing", sharing.id, report, expected)
    tally.add(o)
    progress(o)
    return tally
