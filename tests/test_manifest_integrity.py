"""Sealed manifests (issue 23): a manifest byte that comes back changed is refused, naming the
manifest, and never costs a healthy chunk; real processes, real CRIU, real files on disk."""

from __future__ import annotations

import json

from harness import Daemon, Workloads, ask, error_of, wait_for

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
