"""Sealed manifests (issue 23): a manifest byte that comes back changed is refused, naming the
manifest, and never costs a healthy chunk; real processes, real CRIU, real files on disk."""

from __future__ import annotations

import io
import json
from pathlib import Path

import manifestlib
from harness import Daemon, Workloads, ask, error_of, wait_for
from snapd_daemon.store import bundle

MiB = 1 << 20


def _pages_chunk(manifest: dict) -> tuple[int, int]:
    """(file index, chunk index) of the first full 2 MiB chunk of a pages image."""
    for i, entry in enumerate(manifest["files"]):
        if entry["name"].startswith("pages-"):
            for j, ref in enumerate(entry["chunks"]):
                if ref["length"] == 2 * MiB and ref["id"]:
                    return i, j
    raise AssertionError("no 2 MiB chunk in a pages image")


def _quarantined_chunks(daemon: Daemon) -> list[str]:
    root = daemon.state_dir / "quarantine" / "chunks"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_wrong_chunk_length_never_quarantines_the_healthy_chunk(daemon: Daemon, workloads: Workloads) -> None:
    """The issue's case: 2097152 -> 2087152 in one manifest; the other snapshot sharing the
    chunk still restores with the right memory, and no chunk is quarantined."""
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    with daemon.client() as c:
        edited = c.checkpoint(pid, leave_running=True)
        intact = c.checkpoint(pid)
    daemon.stop()
    path = daemon.state_dir / "manifests" / f"{edited.id}.json"
    data = json.loads(path.read_text())
    i, j = _pages_chunk(data)
    data["files"][i]["chunks"][j]["length"] = 2087152
    path.write_text(json.dumps(data))
    daemon.start()
    with daemon.client() as c:
        err = error_of(lambda: c.restore(edited.id))
        assert err.error_class == "ManifestDamaged" and err.exit_code == 32, err
        assert edited.id in err.message and "manifest" in err.message
        assert _quarantined_chunks(daemon) == []
        restored = c.restore(intact.id)
    wait_for(lambda: ask(restored.root_pid, report)[1] == digest, 30, "the intact snapshot's memory")


def test_manifest_corruption_campaign(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """56 damaged copies of a real snapshot's manifest (40 bit flips, 8 semantic edits with their
    old seal, the same 8 sealed anew): each imported into a second daemon, and three edits
    also written over the manifest in the first daemon's store. No copy restores wrong
    memory unless it is a forgery (sealed anew) that no cheap check can tell, no chunk is
    quarantined, every refusal names the manifest, and the snapshot sharing the chunks
    restores with the right memory at the end."""
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    with daemon.client() as c:
        first = c.checkpoint(pid, leave_running=True)
        sharing = c.checkpoint(pid)
        sink = io.BytesIO()
        c.export_snapshot(first.id, sink)
    stream = sink.getvalue()
    cases = manifestlib.corruptions(bundle.Reader([stream]).manifest(), flips=40, seed=23)
    tally = manifestlib.Tally()
    second = Daemon(tmp_path / "second")
    (tmp_path / "second").mkdir()
    try:
        manifestlib.via_import(second.start(), stream, cases, report, digest, tally)
    finally:
        second.close()
    on_disk = [case for case in cases if case[0] in ("bit-flip", "span-offset", "chunk-length")][-3:]
    manifestlib.via_store(daemon, first.id, on_disk, report, digest, tally)
    print(f"\n{len(tally.outcomes)} corruptions: {dict(tally.counts())}\n{tally.table()}")
    with daemon.client() as c:
        restored = c.restore(sharing.id)
    assert ask(restored.root_pid, report)[1] == digest
    forged = [o for o in tally.outcomes if o.kind.endswith("/resealed")
              and o.kind.removesuffix("/resealed") not in manifestlib.CAUGHT_RESEALED]
    assert len(tally.outcomes) - len(forged) >= 50
    assert all(o.outcome.startswith("refused") for o in tally.outcomes if o not in forged), tally.table()
    assert [v for o in tally.outcomes if o not in forged for v in o.violations] == []
    assert all(not v.startswith("chunk") for o in forged for v in o.violations), tally.violations
