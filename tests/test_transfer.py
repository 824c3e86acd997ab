"""`snapd export` / `snapd import`: a snapshot moved between two real daemons as one stream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import manifestlib
from harness import Daemon, Workloads, ask, gone, snapd, wait_for
from snapd_client import SnapdClient
from snapd_daemon.store import bundle


@pytest.fixture
def second(tmp_path: Path) -> Iterator[Daemon]:
    """Another daemon with a store of its own: the other host."""
    root = tmp_path / "other"
    root.mkdir()
    d = Daemon(root).start()
    yield d
    d.stop()


def _chunk_files(d: Daemon) -> set[str]:
    return {p.name for p in (d.state_dir / "chunks").glob("*/*")}


def _temporaries(d: Daemon) -> list[Path]:
    return [p for p in (d.state_dir / "chunks").glob("*/*") if ".tmp-" in p.name]


def test_export_import_restore_on_the_other_daemon(daemon: Daemon, second: Daemon, workloads: Workloads,
                                                   tmp_path: Path) -> None:
    pid, report = workloads.start("memhold.py", "16")
    digest = report.read_text().split()[1]
    snap = json.loads(snapd(daemon, "checkpoint", str(pid), "--name", "moved", "--json").stdout)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")

    stream = tmp_path / "moved.snapd"
    out = snapd(daemon, "export", snap["id"][:20], "-o", str(stream), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes"] == stream.stat().st_size and stream.stat().st_mode & 0o077 == 0
    assert stream.read_bytes().startswith(bundle.MAGIC)

    imported = snapd(second, "import", str(stream), "--json")
    assert imported.returncode == 0, imported.stderr
    there = json.loads(imported.stdout)
    assert there["id"] == snap["id"] and there["name"] == "moved" and there["new_bytes"] == there["stored_bytes"]
    assert _chunk_files(second) == _chunk_files(daemon)

    assert not there["already_present"]
    again = snapd(second, "import", str(stream), "--json")  # the same snapshot: nothing changes
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == snap["id"]
    assert json.loads(again.stdout)["already_present"]
    said = snapd(second, "import", str(stream))
    assert said.stdout == f"{snap['id']} (moved) is already in this store: nothing imported\n"
    assert [s["id"] for s in json.loads(snapd(second, "list", "--json").stdout)["snapshots"]] == [snap["id"]]

    restored = snapd(second, "restore", "moved")
    assert restored.returncode == 0, restored.stderr
    assert ask(pid, report)[1] == digest
    assert snapd(second, "fsck").returncode == 0


def test_pipe_and_only_missing_chunks_stored(daemon: Daemon, second: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "16")
    with daemon.client() as c:
        first = c.checkpoint(pid, leave_running=True)
        later = c.checkpoint(pid, leave_running=True)  # the same memory: shares almost every chunk

    def pipe(snapshot: str) -> dict[str, object]:
        export = subprocess.Popen([sys.executable, "-m", "snapd_client", "--target", daemon.target, "export",
                                   snapshot, "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        imported = subprocess.run([sys.executable, "-m", "snapd_client", "--target", second.target, "import", "-",
                                   "--json"], stdin=export.stdout, capture_output=True, text=True, timeout=120)
        assert export.wait(120) == 0 and imported.returncode == 0, imported.stderr
        return dict(json.loads(imported.stdout))

    got = pipe(first.id)
    assert got["id"] == first.id
    before = _chunk_files(second)
    got = pipe(later.id)
    added = _chunk_files(second) - before
    assert got["id"] == later.id and 0 < len(added) < len(before) // 2
    assert got["new_bytes"] < got["stored_bytes"] // 2


def _stream(d: Daemon, snapshot: str) -> bytes:
    out = subprocess.run([sys.executable, "-m", "snapd_client", "--target", d.target, "export", snapshot, "-o", "-"],
                         capture_output=True, timeout=120)
    assert out.returncode == 0
    return out.stdout


@pytest.mark.parametrize("damage", ["flipped-byte", "cut-short", "not-a-stream", "trailing-bytes"])
def test_a_bad_stream_leaves_nothing(daemon: Daemon, second: Daemon, workloads: Workloads, tmp_path: Path,
                                     damage: str) -> None:
    pid, _ = workloads.start("memhold.py", "8")
    with daemon.client() as c:
        snap = c.checkpoint(pid, leave_running=True)
    data = bytearray(_stream(daemon, snap.id))
    if damage == "flipped-byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "cut-short":
        del data[len(data) * 2 // 3:]
    elif damage == "not-a-stream":
        data[:8] = b"GARBAGE!"
    else:
        data += b"x"
    bad = tmp_path / "bad.snapd"
    bad.write_bytes(bytes(data))
    out = snapd(second, "import", str(bad), "--json")
    error = json.loads(out.stderr)
    assert out.returncode == 51 and error["error"] == "ImportInvalid", out.stderr
    expected = {"flipped-byte": "corrupt", "cut-short": "cut short", "not-a-stream": "not a snapd export stream",
                "trailing-bytes": "after the END record"}[damage]
    assert expected in error["message"]
    with second.client() as c:
        assert list(c.list().snapshots) == []
    assert not list((second.state_dir / "manifests").glob("*.json")) and not _temporaries(second)
    assert _chunk_files(second) == set()


@pytest.mark.parametrize("garbage", [b"hello\n", b"", b"SNAP", b"x" * 4096])
def test_garbage_on_stdin_is_not_an_export_stream(second: Daemon, garbage: bytes) -> None:
    out = subprocess.run([sys.executable, "-m", "snapd_client", "--target", second.target, "import", "-"],
                         input=garbage, capture_output=True, timeout=120)
    message = out.stderr.decode()
    assert out.returncode == 51, message
    # a short start of a real stream (b"SNAP") is one cut short; anything else is not a stream at all
    assert ("cut short" if garbage == b"SNAP" else "not a snapd export stream") in message
    assert "cut short" not in message or garbage == b"SNAP"


def test_export_of_a_damaged_snapshot_names_the_chunk(daemon: Daemon, client: SnapdClient,
                                                      workloads: Workloads, tmp_path: Path) -> None:
    pid, _ = workloads.start("memhold.py", "8")
    snap = client.checkpoint(pid, leave_running=True)
    victim = next(p for p in (daemon.state_dir / "chunks").glob("*/*") if p.stat().st_size > 1 << 20)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = snapd(daemon, "export", snap.id, "-o", str(tmp_path / "x.snapd"))
    assert out.returncode == 24 and victim.name in out.stderr
    assert not (tmp_path / "x.snapd").exists() and not list(tmp_path.glob(".x.snapd.partial-*"))


def _rebuilt(data: bytes, change: str) -> bytes:
    """A well-formed stream (valid digest) whose content is wrong in one way."""
    reader = bundle.Reader([data])
    manifest = json.loads(reader.manifest())
    chunks = list(reader.chunks())
    if change == "chunk-left-out":
        chunks = chunks[1:]
    elif change == "foreign-chunk":
        chunks.append(("ab" * 32, chunks[0][1]))
    else:  # a length the manifest records (sealed anew, consistent) differs from its chunk's
        manifest["files"][0]["chunks"][0]["length"] += 1
        manifest["files"][0]["size_bytes"] += 1
    writer = bundle.Writer()
    pieces = [*writer.header(manifestlib.reseal(manifest))]
    for cid, stored in chunks:
        pieces += writer.chunk(cid, stored)
    pieces += writer.end()
    return b"".join(bytes(p) for p in pieces)


@pytest.mark.parametrize(("change", "message"), [
    ("chunk-left-out", "neither in the stream nor in this store"),
    ("foreign-chunk", "is corrupt"),
    ("wrong-length", "the manifest says"),
])
def test_a_stream_that_disagrees_with_its_manifest_is_refused(daemon: Daemon, second: Daemon, workloads: Workloads,
                                                              tmp_path: Path, change: str, message: str) -> None:
    pid, _ = workloads.start("memhold.py", "8")
    with daemon.client() as c:
        snap = c.checkpoint(pid, leave_running=True)
    forged = tmp_path / "forged.snapd"
    forged.write_bytes(_rebuilt(_stream(daemon, snap.id), change))
    out = snapd(second, "import", str(forged))
    assert out.returncode == 51 and message in out.stderr, out.stderr
    with second.client() as c:
        assert list(c.list().snapshots) == []
    assert _chunk_files(second) == set() and not _temporaries(second)
