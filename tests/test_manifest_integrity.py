"""Sealed manifests (issue 23): a manifest byte that comes back changed is refused, naming the
manifest, and never costs a healthy chunk; real processes, real CRIU, real files on disk."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import obstore
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import manifestlib
from harness import Daemon, Workloads, ask, error_of, gone, snapd, wait_for
from remotelib import local_chunk_temporaries, remote_args
from s3server import S3Server
from snapd_client import SnapdClientError
from snapd_daemon.runtime import Settings
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


def test_manifest_corruption_campaign(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """58 damaged copies of a real snapshot's manifest (40 bit flips, 9 semantic edits with their
    old seal, the same 9 sealed anew) imported into a second daemon, and three also written
    over the manifest in the first daemon's store: none restores wrong memory (only a
    forgery no cheap check can tell could: a chunk id swapped and sealed anew), no chunk
    is quarantined, every refusal names the manifest, and the snapshot sharing the chunks
    restores with the right memory at the end."""
    tally = manifestlib.campaign(daemon, workloads, tmp_path, flips=40, seed=23)
    print(f"\n{len(tally.outcomes) - 1} corruptions: {dict(tally.counts())}\n{tally.table()}")
    forged = [o for o in tally.outcomes if o.kind in manifestlib.FORGERIES]
    damaged = [o for o in tally.outcomes if o.kind != "sharing" and o not in forged]
    assert len(damaged) >= 50
    assert all(o.outcome.startswith("refused") for o in damaged), tally.table()
    assert tally.outcomes[-1].outcome == "restored-right"
    assert [v for o in tally.outcomes if o not in forged for v in o.violations] == []
    assert all(not v.startswith("chunk") for o in forged for v in o.violations), tally.violations


def _ed25519(tmp: Path, name: str) -> tuple[Path, Path]:
    """(private, public) PEM files of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private, public = tmp / f"{name}.key", tmp / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _stream(daemon: Daemon, snapshot_id: str) -> bytes:
    sink = io.BytesIO()
    with daemon.client() as c:
        c.export_snapshot(snapshot_id, sink)
    return sink.getvalue()


def _import(daemon: Daemon, stream: bytes, tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "in.snapd"
    path.write_bytes(stream)
    return snapd(daemon, "import", str(path), "--json")


def _manifest_of(stream: bytes) -> dict:
    return json.loads(bundle.Reader([stream]).manifest())


def _restore_resealed(stream: bytes, content: dict, tmp: Path) -> SnapdClientError:
    """Export ``stream`` with its manifest replaced by ``content`` sealed anew, imported into a
    second daemon: the error its restore fails with."""
    (tmp / "second").mkdir()
    second = Daemon(tmp / "second").start()
    try:
        with second.client() as c:
            data = manifestlib.with_manifest(stream, manifestlib.reseal(content))
            edited = c.import_snapshot(data[i : i + MiB] for i in range(0, len(data), MiB))
            return error_of(lambda: c.restore(edited.id))
    finally:
        second.close()


def test_a_span_moved_inside_a_region_grown_for_it_is_refused_before_anything_runs(
        daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """The largest injected span moved by a page and its region grown by that page, sealed
    anew: every check of the manifest alone passes, and only the snapshot's own page map
    says the bytes belong elsewhere. The restore refuses it with ManifestDamaged naming the
    span before CRIU runs (the campaign's one-page move met such room by chance once)."""
    pid, report = workloads.start("memhold.py", "8")
    with daemon.client() as c:
        snap = c.checkpoint(pid)
        sink = io.BytesIO()
        c.export_snapshot(snap.id, sink)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    content = json.loads(bundle.Reader([sink.getvalue()]).manifest())
    span = manifestlib.largest_span(content)
    regions = content["trimmed"]["regions"][str(span["pid"])]
    i = next(k for k, (start, end) in enumerate(regions) if start <= span["vaddr"] < end)
    if i + 1 == len(regions) or regions[i + 1][0] > regions[i][1]:  # room after it
        regions[i][1] += manifestlib.PAGE
        span["vaddr"] += manifestlib.PAGE
    else:
        regions[i][0] -= manifestlib.PAGE
        span["vaddr"] -= manifestlib.PAGE
    err = _restore_resealed(sink.getvalue(), content, tmp_path)
    assert err.error_class == "ManifestDamaged", err.message
    assert f"{span['vaddr']:#x}" in err.message and "page map" in err.message, err.message
    assert gone(pid)


def test_a_region_a_child_shares_with_its_parent_comes_back_and_its_zero_fill_cannot_be_edited_off(
        daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """A child holds its parent's region with its second half zeroed: its span is marked
    zero_fill (the region is in both processes' mappings: its zero chunks are written too),
    and both copies come back. That mark turned off and sealed anew passes every check of the
    manifest alone; the restore derives the sharing from the snapshot's own mappings and
    refuses it with ManifestDamaged, before anything runs. (Here CRIU restored the child's
    copy fresh, so the edit alone would have done no harm; a region CRIU restores as inherited
    would keep the parent's bytes where the child had zeros.)"""
    pid, report = workloads.start("forkshare.py", "16")
    child_report = Path(f"{report}.child")
    wait_for(child_report.exists, 10, "the child to report")
    child, child_digest = child_report.read_text().split()[:2]
    digest = report.read_text().split()[1]
    with daemon.client() as c:
        snap = c.checkpoint(pid)
        sink = io.BytesIO()
        c.export_snapshot(snap.id, sink)
        wait_for(lambda: gone(pid) and gone(int(child)), 10, "the checkpointed tree to stop")
        c.restore(snap.id)
        assert ask(pid, report)[1] == digest and ask(int(child), child_report)[1] == child_digest
        c.stop_instance(c.instances().instances[0].id)
    wait_for(lambda: gone(pid) and gone(int(child)), 10, "the restored tree to stop")
    content = json.loads(bundle.Reader([sink.getvalue()]).manifest())
    spans = [s for s in content["trimmed"]["inject"] if s["pid"] == int(child)]
    assert spans and all(s["zero_fill"] for s in spans)  # its region is also the parent's
    span = next(s for s in spans if s["length"] == 16 << 20)  # the shared region, its second half zeroed
    span["zero_fill"] = False
    err = _restore_resealed(sink.getvalue(), content, tmp_path)
    assert err.error_class == "ManifestDamaged", err.message
    assert f"{span['vaddr']:#x}" in err.message and "shared with another process" in err.message, err.message
    assert gone(pid) and gone(int(child))


@pytest.mark.parametrize("how", ["stale-seal", "unsealed", "resealed", "resealed-hot"])
def test_a_wrong_chunk_length_never_quarantines_the_healthy_chunk(daemon: Daemon, workloads: Workloads,
                                                                  how: str) -> None:
    """The issue's case, 2097152 -> 2087152 in one manifest, with the old seal (the seal fails),
    without a seal (written before seals: the chunks no longer cover the file) and sealed
    anew with the next chunk's length making up for it (found when the chunk is read:
    intact, of another length; also with the chunks prefetched into the hot tier, whose
    copy stays): refused each time naming the manifest; no chunk is quarantined, and the
    other snapshot sharing the chunk restores with the right memory."""
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    with daemon.client() as c:
        edited = c.checkpoint(pid, leave_running=True)
        intact = c.checkpoint(pid)
        if how == "resealed-hot":
            c.prefetch(edited.id)
    daemon.stop()
    path = daemon.state_dir / "manifests" / f"{edited.id}.json"
    data = json.loads(path.read_text())
    i, j = _pages_chunk(data)
    chunks = data["files"][i]["chunks"]
    chunks[j]["length"] = 2087152
    if how == "stale-seal":
        path.write_text(json.dumps(data))
    elif how == "unsealed":
        del data["seal"]
        path.write_text(json.dumps(data))
    else:
        chunks[j + 1 if j + 1 < len(chunks) else j - 1]["length"] += 10000
        path.write_bytes(manifestlib.reseal(data))
    daemon.start()
    with daemon.client() as c:
        err = error_of(lambda: c.restore(edited.id))
        assert err.error_class == "ManifestDamaged" and err.exit_code == 32, err
        assert edited.id in err.message and "manifest" in err.message
        assert {"stale-seal": "seal does not match", "unsealed": "chunks of image file",
                "resealed": "that chunk is intact", "resealed-hot": "that chunk is intact"}[how] in err.message, err.message
        assert _quarantined_chunks(daemon) == [] and not daemon.staging_leftovers()
        if how == "resealed-hot":
            hot = Settings(state_dir=daemon.state_dir).hot_dir()
            assert hot is not None and (hot / "chunks" / chunks[j]["id"][:2] / chunks[j]["id"]).is_file()
        restored = c.restore(intact.id)
    wait_for(lambda: ask(restored.root_pid, report)[1] == digest, 30, "the intact snapshot's memory")
    assert _quarantined_chunks(daemon) == []


def test_a_manifest_written_before_seals_loads_and_is_sealed(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    with daemon.client() as c:
        snap = c.checkpoint(pid)
    daemon.stop()
    path = daemon.state_dir / "manifests" / f"{snap.id}.json"
    legacy = json.loads(path.read_text())
    del legacy["seal"]
    path.write_text(json.dumps(legacy, indent=1))
    daemon.start()
    sealed = json.loads(path.read_text())
    assert sealed.pop("seal") and sealed == legacy
    with daemon.client() as c:
        restored = c.restore(snap.id)
    assert ask(restored.root_pid, report)[1] == digest


def test_fsck_list_and_inspect_report_a_manifest_changed_under_the_daemon(daemon: Daemon,
                                                                          workloads: Workloads) -> None:
    """A manifest changed on disk while the daemon runs (the issue's offset moved by 4096):
    fsck finds it (exit 32, both digests), quarantines it, and list and inspect show the
    snapshot as damaged from then on; the other snapshot stays clean."""
    pid, report = workloads.start("memhold.py", "8")
    with daemon.client() as c:
        edited = c.checkpoint(pid, leave_running=True, name="edited")
        clean = c.checkpoint(pid, leave_running=True, name="clean")
    path = daemon.state_dir / "manifests" / f"{edited.id}.json"
    data = json.loads(path.read_text())
    manifestlib.edit(data, "span-offset", random.Random(1))
    path.write_text(json.dumps(data))
    out = snapd(daemon, "fsck")
    assert out.returncode == 32, out.stdout + out.stderr
    assert f"DAMAGED manifest of snapshot {edited.id}" in out.stdout and "seal does not match" in out.stdout
    assert clean.id not in out.stdout
    quarantined = daemon.state_dir / "quarantine" / "manifests" / path.name
    assert quarantined.exists() and not path.exists() and _quarantined_chunks(daemon) == []
    listing = snapd(daemon, "list")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(edited.id))
    assert "damaged" in row.split()
    assert "damaged" not in next(line for line in listing.stdout.splitlines() if line.startswith(clean.id)).split()
    shown = snapd(daemon, "inspect", edited.id)
    assert shown.returncode == 32 and "ManifestDamaged" not in shown.stdout and str(quarantined) in shown.stderr
    assert snapd(daemon, "fsck", clean.id).returncode == 0
    assert snapd(daemon, "fsck").returncode == 32  # the quarantined one stays reported


@pytest.mark.parametrize(("change", "field", "words"), [
    ("name", "name", "must be 1-128 characters"),
    ("labels", "labels", "201 labels given, at most 32"),
    ("label-key", "labels", "'a/../k'"),
    ("label-value", "labels", "printable"),
    ("hostname", "hostname", "printable characters"),
    ("file-name", "", "is not a plain file name"),
    ("missing", "", "field 'processes' is missing"),
])
def test_import_validates_the_manifest_as_the_api_does(daemon: Daemon, workloads: Workloads, tmp_path: Path,
                                                       change: str, field: str, words: str) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    with daemon.client() as c:
        snap = c.checkpoint(pid, leave_running=True)
    stream = _stream(daemon, snap.id)
    data = _manifest_of(stream)
    if change == "name":
        data["name"] = "evil\x1b[2K\rforged line\nx"
    elif change == "labels":
        data["labels"] = {f"k{i}": "v" for i in range(201)}
    elif change == "label-key":
        data["labels"] = {"a/../k": "v"}
    elif change == "label-value":
        data["labels"] = {"k": "v\x1b]0;title\x07"}
    elif change == "hostname":
        data["hostname"] = "host\nDAMAGED nothing"
    elif change == "file-name":
        data["files"][0]["name"] = "../../etc/cron.d/x"
    else:
        del data["processes"]
    second = Daemon(tmp_path / "second")
    (tmp_path / "second").mkdir()
    try:
        second.start()
        out = _import(second, manifestlib.with_manifest(stream, manifestlib.reseal(data)), tmp_path)
        error = json.loads(out.stderr)
        expected = ("ImportInvalid", 51) if field else ("ManifestDamaged", 32)
        assert (error["error"], out.returncode) == expected, out.stderr
        assert words in error["message"] and "Error" not in error["message"].replace(expected[0], "")
        if field:
            assert f"invalid {field}:" in error["message"]
        with second.client() as c:
            assert not c.list().snapshots
    finally:
        second.close()


def test_signed_exports_and_require_signed(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    """A host with a signing key signs what it exports; a host that requires signatures takes
    that in, and refuses an unsigned export, one signed by a key it does not trust and one
    whose signature does not verify, naming the key id each time."""
    fleet_key, fleet_pub = _ed25519(tmp_path, "fleet")
    other_key, _ = _ed25519(tmp_path, "other")
    pid, _ = workloads.start("memhold.py", "4")
    with daemon.client() as c:
        unsigned = c.checkpoint(pid, leave_running=True)
    unsigned_stream = _stream(daemon, unsigned.id)
    streams = []
    for key in (fleet_key, other_key):
        daemon.stop()
        daemon.extra_args = ("--signing-key", str(key))
        daemon.start()
        streams.append(_stream(daemon, unsigned.id))
    signed_stream, foreign_stream = streams
    signature = _manifest_of(signed_stream)["signature"]
    assert "signature" not in _manifest_of(unsigned_stream)
    fleet_id = signature["key"]
    tampered = _manifest_of(signed_stream)
    tampered["signature"]["ed25519"] = _manifest_of(foreign_stream)["signature"]["ed25519"]
    strict_root = tmp_path / "strict"
    strict_root.mkdir()
    for args, words in ((["--require-signed"], "require_signed"), (["--signing-key", str(fleet_pub)], "signing_key")):
        check = subprocess.run([sys.executable, "-m", "snapd_daemon", "serve", "--check-config", *args,
                                "--state-dir", str(strict_root / "state")], capture_output=True, text=True, timeout=60)
        assert check.returncode == 43 and words in check.stderr, check.stderr
    strict = Daemon(strict_root, ("--trusted-key", str(fleet_pub), "--require-signed"))
    try:
        strict.start()
        for stream, expected, words in (
            (unsigned_stream, ("ManifestUnsigned", 33), "it is not signed"),
            (foreign_stream, ("ManifestUnsigned", 33), "which is not one of trusted_key"),
            (manifestlib.with_manifest(signed_stream, json.dumps(tampered).encode()), ("SignatureInvalid", 34),
             f"by key {fleet_id} does not verify"),
        ):
            out = _import(strict, stream, tmp_path)
            error = json.loads(out.stderr)
            assert (error["error"], out.returncode) == expected, out.stderr
            assert words in error["message"] and unsigned.id in error["message"]
            if expected[0] == "ManifestUnsigned":
                assert fleet_id in error["message"]
        out = _import(strict, signed_stream, tmp_path)
        assert out.returncode == 0, out.stderr
        with strict.client() as c:
            assert [s.id for s in c.list().snapshots] == [unsigned.id]
    finally:
        strict.close()


def test_push_signs_and_pull_and_on_demand_restore_verify(tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    """On SeaweedFS: host a signs what it pushes; host b (require_signed, trusting a's key) pulls
    it; a manifest changed in the bucket fails its seal, one whose signature was replaced
    fails its signature, and neither is restored on demand nor leaves anything behind."""
    key, public = _ed25519(tmp_path, "fleet")
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    prefix = "signed"
    a = Daemon(tmp_path / "a", (*remote_args(tmp_path, s3, prefix), "--signing-key", str(key)))
    b = Daemon(tmp_path / "b", (*remote_args(tmp_path, s3, prefix), "--trusted-key", str(public), "--require-signed"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with a.start().client() as ca:
            kept = ca.checkpoint(pid, leave_running=True)
            changed = ca.checkpoint(pid, leave_running=True)
            forged = ca.checkpoint(pid)
            for snap in (kept, changed, forged):
                ca.push(snap.id)
        bucket = s3.store(prefix)
        objects = {snap.id: json.loads(bytes(obstore.get(bucket, f"manifests/{snap.id}.json").bytes()))
                   for snap in (changed, forged)}
        objects[changed.id]["labels"] = {"changed": "in the bucket"}
        objects[forged.id]["labels"] = {"changed": "in the bucket"}
        resealed = json.loads(manifestlib.reseal(objects[forged.id]))
        resealed["signature"] = objects[forged.id]["signature"]
        for sid, content in ((changed.id, objects[changed.id]), (forged.id, resealed)):
            obstore.delete(bucket, f"manifests/{sid}.json")
            obstore.put(bucket, f"manifests/{sid}.json", json.dumps(content).encode())
        with b.start().client() as cb:
            err = error_of(lambda: cb.restore(changed.id))
            assert (err.error_class, err.exit_code) == ("ManifestDamaged", 32) and "seal does not match" in err.message
            assert f"manifests/{changed.id}.json" in err.message
            err = error_of(lambda: cb.restore(forged.id))
            assert (err.error_class, err.exit_code) == ("SignatureInvalid", 34), err
            assert objects[forged.id]["signature"]["key"] in err.message
            assert not cb.list().snapshots and not local_chunk_temporaries(b)
            assert cb.pull(kept.id).snapshot_id == kept.id
            restored = cb.restore(kept.id)
        assert restored.root_pid == pid and ask(pid, report)[1] == digest
        assert _quarantined_chunks(b) == []
    finally:
        a.close()
        b.close()
