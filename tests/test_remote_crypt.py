"""The encrypted remote tier against a real S3 server (SeaweedFS) and real CRIU snapshots: no
plaintext in the bucket, dedupe across hosts sharing the fleet key, wrong or missing keys and
altered objects refused by name with nothing published, key rotation, gc on sealed objects."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import obstore

from harness import Daemon, Workloads, ask, error_of, gone, snapd, wait_for
from remotelib import bucket_objects, chunk_objects, local_chunk_temporaries, manifest_chunks, remote_args
from s3server import S3Server
from snapd_daemon.store.envelope import MAGIC, Envelope, FleetKey


def _key(path: Path) -> Path:
    """A fleet key file: 32 random bytes, readable by its owner only."""
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def _key_id(path: Path) -> str:
    return FleetKey.derive(path.read_bytes(), path).id


def _names(key: Path, cids: set[str]) -> set[str]:
    """The object names of chunks ``cids`` sealed with ``key``, as a host holding it computes them."""
    envelope = Envelope(FleetKey.derive(key.read_bytes(), key))
    return {envelope.chunk_name(cid, _key_id(key)) for cid in cids}


@contextmanager
def _hosts(tmp: Path, s3: S3Server, prefix: str, *configs: dict[str, str]) -> Iterator[list[Daemon]]:
    """One daemon per config (remote options by name: encryption_key, read_key; allow_plaintext
    with a key), each with its own state directory, all on ``prefix`` of the bucket."""
    with ExitStack() as stack:
        hosts = []
        for i, config in enumerate(configs):
            root = tmp / f"host{i}"
            root.mkdir()
            options = {k: v for k, v in config.items() if k != "allow_plaintext"}
            flags = ("--remote-allow-plaintext",) if "allow_plaintext" in config else ()
            d = Daemon(root, remote_args(tmp, s3, prefix, **options) + flags)
            stack.callback(d.close)
            hosts.append(d.start())
        yield hosts


def _objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    store = s3.store(prefix)
    return {key: bytes(obstore.get(store, key).bytes()) for key in bucket_objects(s3, prefix)}


def _local_stored_chunks(d: Daemon) -> bytes:
    return b"".join(p.read_bytes() for p in (d.state_dir / "chunks").rglob("*") if p.is_file())


def _nothing_published(d: Daemon) -> None:
    with d.client() as c:
        assert not c.list().snapshots
    assert not local_chunk_temporaries(d) and d.staging_leftovers() == []


def test_encrypted_push_pull_restore_leave_no_plaintext_and_dedupe_across_hosts(
        tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    marker = secrets.token_bytes(64)
    name, label = f"secret-model-{secrets.token_hex(6)}", f"owner-{secrets.token_hex(6)}"
    key = _key(tmp_path / "fleet.key")
    fleet = {"encryption_key": str(key)}
    pa, report = workloads.start("secret.py", "48", "7", marker.hex())
    _, digest, _ = report.read_text().split()
    pb_, _ = workloads.start("secret.py", "48", "7", marker.hex())
    with _hosts(tmp_path, s3, "crypt", fleet, fleet, fleet) as (a, b, c), \
            a.client() as ca, b.client() as cb, c.client() as cc:
        snap = ca.checkpoint(pa, name=name, labels={"team": label})
        wait_for(lambda: gone(pa), 10, "the checkpointed process to stop")
        assert marker in _local_stored_chunks(a)  # the stored form holds the secret as it is
        pushed = ca.push(snap.id)
        ids_a = manifest_chunks(a, snap.id)
        assert pushed.uploaded_chunks == pushed.chunks == len(ids_a)
        assert set(chunk_objects(s3, "crypt")) == _names(key, ids_a)

        # host b holds the same memory (same seed): its push uploads no object for a chunk of
        # it, only those of the chunks a's snapshot lacks (its own pids, heap, CRIU images)
        other = cb.checkpoint(pb_, leave_running=True)
        ids_b = manifest_chunks(b, other.id)
        before = set(chunk_objects(s3, "crypt"))
        pushed_b = cb.push(other.id)
        added = set(chunk_objects(s3, "crypt")) - before
        assert len(ids_a & ids_b) >= 24  # the 48 MiB region's 2 MiB chunks at least
        assert added == _names(key, ids_b - ids_a) and pushed_b.uploaded_chunks == len(added)
        assert pushed_b.uploaded_bytes < pushed.uploaded_bytes // 10

        objects = _objects(s3, "crypt")
        manifests = [k for k in objects if k.startswith("manifests/")]
        assert sorted(manifests) == sorted(f"manifests/{s}.json" for s in (snap.id, other.id))
        for obj, data in objects.items():
            assert data.startswith(MAGIC), obj
            for secret in (marker, marker.hex().encode(), name.encode(), label.encode()):
                assert secret not in data, f"{obj} holds plaintext"
        names = {obj.rsplit("/", 1)[-1] for obj in objects if obj.startswith("chunks/")}
        assert not names & (ids_a | ids_b)  # no chunk is named by its plaintext hash

        # on demand on b (it has the shared chunks already), then a whole pull on c
        restored = cb.restore(name)
        assert restored.root_pid == pa and 0 < restored.pulled_chunks == len(ids_a - ids_b)
        assert ask(pa, report)[1] == digest
        assert [s.labels["team"] for s in cb.list(name).snapshots] == [label]
        pulled = cc.pull(other.id)
        assert pulled.fetched_chunks == len(ids_b) and not cc.fsck().damage
        assert sorted(s.name for s in cc.list(remote=True).snapshots) == sorted([name, ""])


def test_wrong_missing_key_and_altered_objects_are_refused_by_name_publishing_nothing(
        tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    key = _key(tmp_path / "fleet.key")
    wrong = _key(tmp_path / "wrong.key")
    pid, report = workloads.start("memhold.py", "24")
    _, digest, _ = report.read_text().split()
    with _hosts(tmp_path, s3, "crypt-bad", {"encryption_key": str(key)}, {"encryption_key": str(wrong)}, {},
                {"encryption_key": str(key)}) as (a, other, plain, b), a.client() as ca, b.client() as cb:
        snap = ca.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        ca.push(snap.id)
        manifest = f"crypt-bad/manifests/{snap.id}.json"
        for host, held in ((other, f"key id {_key_id(wrong)}"), (plain, "no key")):
            for command in (("pull", snap.id), ("restore", snap.id)):
                out = snapd(host, *command)
                assert out.returncode == 36, out.stderr
                assert f"{manifest} in bucket snapd-test is encrypted with key id {_key_id(key)}" in out.stderr
                assert f"it holds {held}" in out.stderr and "remote_read_key" in out.stderr
            _nothing_published(host)
            assert gone(pid)  # nothing was restored
        # by name: the manifest it cannot open is left out of the listing, and the miss says why
        with other.client() as co:
            assert not co.list(remote=True).snapshots
        out = snapd(other, "pull", "some-name")
        assert out.returncode == 55 and "1 manifest(s) could not be read" in out.stderr
        assert f"encrypted with key id {_key_id(key)}" in out.stderr

        # one chunk's bytes altered, then another chunk's object put in its place: both fail
        # authentication (35, not 54 for a corrupt chunk), naming the object and the key id
        store = s3.store("crypt-bad")
        chunk_keys = sorted(bucket_objects(s3, "crypt-bad", "chunks/"))
        victim, donor = chunk_keys[0], chunk_keys[1]
        original = bytes(obstore.get(store, victim).bytes())
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        for altered in (bytes(flipped), bytes(obstore.get(store, donor).bytes())):
            obstore.put(store, victim, altered)
            for call in (lambda: cb.pull(snap.id), lambda: cb.restore(snap.id)):
                err = error_of(call)
                assert (err.error_class, err.exit_code) == ("RemoteUndecryptable", 35), err.message
                assert f"crypt-bad/{victim}" in err.message and f"sealed with key id {_key_id(key)}" in err.message
                assert "fails authentication" in err.message
                _nothing_published(b)
                assert gone(pid)
        obstore.put(store, victim, original)

        # a plaintext manifest planted among sealed ones is refused, never restored
        obstore.put(store, "manifests/planted.json", (a.state_dir / "manifests" / f"{snap.id}.json").read_bytes())
        err = error_of(lambda: cb.pull("planted"))
        assert err.exit_code == 35 and "crypt-bad/manifests/planted.json" in err.message
        assert "not encrypted" in err.message and "remote_allow_plaintext" in err.message
        obstore.delete(store, "manifests/planted.json")
        assert cb.restore(snap.id).root_pid == pid and ask(pid, report)[1] == digest


def test_key_rotation_keeps_old_objects_readable_and_gc_works_on_sealed_objects(
        tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    old, new = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    pid, _ = workloads.start("memhold.py", "16")
    with _hosts(tmp_path, s3, "crypt-rotate", {"encryption_key": str(old)}) as (a,), a.client() as ca:
        first = ca.checkpoint(pid, name="first", leave_running=True)
        ca.push(first.id)
    under_old = set(chunk_objects(s3, "crypt-rotate"))
    rotated = {"encryption_key": str(new), "read_key": str(old)}
    (tmp_path / "later").mkdir()
    with _hosts(tmp_path / "later", s3, "crypt-rotate", rotated, rotated, {"encryption_key": str(new)}) as \
            (b, c, only_new), b.client() as cb, c.client() as cc:
        second = cb.checkpoint(pid, name="second", leave_running=True)
        pushed = cb.push(second.id)
        # a new key names chunks anew: the second snapshot's chunks are all sealed under it
        assert pushed.uploaded_chunks == pushed.chunks
        assert cc.pull(first.id).fetched_chunks == len(under_old)  # written under the old key
        assert not cc.fsck().damage
        assert sorted(s.name for s in cb.list(remote=True).snapshots) == ["first", "second"]

        # gc reclaims an orphan sealed chunk and nothing any snapshot (of either key) uses
        store = s3.store("crypt-rotate")
        orphan = "chunks/ff/" + "f" * 64
        live = set(chunk_objects(s3, "crypt-rotate"))
        obstore.put(store, orphan, bytes(obstore.get(store, f"chunks/{min(under_old)[:2]}/{min(under_old)}").bytes()))
        out = snapd(b, "gc", "--remote")
        assert out.returncode == 0 and "2 snapshot(s) kept" in out.stdout and "1 unreferenced chunk(s)" in out.stdout
        assert set(chunk_objects(s3, "crypt-rotate")) == live and under_old <= live

        # a host without the old key lists what it can read, and its gc removes nothing
        with only_new.client() as cn:
            assert [s.name for s in cn.list(remote=True).snapshots] == ["second"]
        count = len(chunk_objects(s3, "crypt-rotate"))
        out = snapd(only_new, "gc", "--remote")
        assert out.returncode == 36 and f"key id {_key_id(old)}" in out.stderr
        assert len(chunk_objects(s3, "crypt-rotate")) == count
        assert not b.staging_leftovers()


def test_a_bucket_written_before_encryption_is_read_only_with_allow_plaintext(
        tmp_path: Path, s3: S3Server, workloads: Workloads) -> None:
    key = str(_key(tmp_path / "fleet.key"))
    pid, _ = workloads.start("memhold.py", "8")
    with _hosts(tmp_path, s3, "crypt-migrate", {}, {"encryption_key": key, "allow_plaintext": "1"},
                {"encryption_key": key}) as (old, migrating, strict), \
            old.client() as co, migrating.client() as cm, strict.client() as cs:
        plain = co.checkpoint(pid, name="plain", leave_running=True)
        co.push(plain.id)
        plain_chunks = set(chunk_objects(s3, "crypt-migrate"))
        assert plain_chunks == manifest_chunks(old, plain.id)  # named by their hashes, as before
        # the migrating host reads the old snapshot and writes sealed objects only
        assert cm.pull(plain.id).fetched_chunks == len(plain_chunks)
        sealed = cm.checkpoint(pid, name="sealed", leave_running=True)
        assert cm.push(sealed.id).uploaded_chunks == len(manifest_chunks(migrating, sealed.id))
        assert _objects(s3, "crypt-migrate")[f"manifests/{sealed.id}.json"].startswith(MAGIC)
        assert sorted(s.name for s in cm.list(remote=True).snapshots) == ["plain", "sealed"]
        out = snapd(migrating, "gc", "--remote", "--dry-run")
        assert out.returncode == 0 and "2 snapshot(s) kept; would remove 0 unreferenced chunk(s)" in out.stdout
        # a host without remote_allow_plaintext refuses the plaintext snapshot, and gc while it is there
        assert [s.name for s in cs.list(remote=True).snapshots] == ["sealed"]
        err = error_of(lambda: cs.pull(plain.id))
        assert err.exit_code == 35 and "not encrypted" in err.message and "remote_allow_plaintext" in err.message
        _nothing_published(strict)
        count = len(chunk_objects(s3, "crypt-migrate"))
        assert snapd(strict, "gc", "--remote").returncode == 35
        assert len(chunk_objects(s3, "crypt-migrate")) == count


def test_key_files_are_checked_by_check_config(tmp_path: Path, s3: S3Server) -> None:
    def check(*args: str) -> tuple[int, str]:  # a reachable endpoint: --check-config connects to it
        d = Daemon(tmp_path, ("--remote-endpoint", s3.endpoint, "--remote-bucket", "b", *args,
                              "--check-config"))
        out = subprocess.run(d.cli_args(), capture_output=True, text=True, timeout=60)
        return out.returncode, out.stderr

    good = _key(tmp_path / "good.key")
    assert check("--remote-encryption-key", str(good))[0] == 0
    assert check("--remote-allow-plaintext")[0] == 0
    code, err = check()
    assert code == 43 and "remote_encryption_key" in err and "remote_allow_plaintext = true" in err
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(16))
    short.chmod(0o600)
    loose = _key(tmp_path / "loose.key")
    loose.chmod(0o644)
    for path, why in ((short, "16 bytes; a key file holds exactly 32"), (loose, "mode 0644 lets every user read"),
                      (tmp_path / "absent.key", "No such file")):
        code, err = check("--remote-encryption-key", str(path))
        assert code == 43 and f"remote_encryption_key {path}" in err and why in err, err
    code, err = check("--remote-encryption-key", str(good), "--remote-read-key", str(loose))
    assert code == 43 and f"remote_read_key {loose}" in err
    code, err = check("--remote-read-key", str(good), "--remote-allow-plaintext")
    assert code == 43 and "remote_read_key" in err and "without remote_encryption_key" in err
