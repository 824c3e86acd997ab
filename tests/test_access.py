"""Who may talk to the daemon: socket permissions, peer credentials, mutual TLS, config."""

from __future__ import annotations

import grp
import importlib
import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness import Daemon
from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc
from snapd_client import SnapdClient, TlsFiles
from snapd_daemon.api.access import AccessPolicy, PeerTags
from snapd_daemon.api.gate import Gate

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534  # uid of nobody and gid of nogroup on Debian/Ubuntu; used numerically
OUTSIDER = 4243  # a uid/gid no account has


@pytest.fixture(scope="module")
def private_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client, its dependencies and peer_client.py copied into a directory only root can
    read (pytest's are 0700), as a checkout and its .venv in root's home are: the calls made as
    other users must not need to read any of it."""
    private = tmp_path_factory.mktemp("private-checkout")
    assert stat.S_IMODE(private.stat().st_mode) & 0o077 == 0
    for package in ("grpc", "google", "click", "snapd_client", "snapd"):
        source = Path(importlib.import_module(package).__path__[0])
        shutil.copytree(source, private / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(__file__).parent / "peer_client.py", private)
    return private


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="snapd-sock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _daemon(tmp_path: Path, public_dir: Path, *args: str) -> Daemon:
    d = Daemon(tmp_path, args)
    d.socket = public_dir / "snapd.sock"
    return d.start()


def _peer(private: Path, target: str, uid: int, gid: int, groups: tuple[int, ...] = (),
          cli: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """peer_client.py run from ``private``, whose copies come first on the path (-I: no
    PYTHONPATH; the script's directory is searched first)."""
    argv = [sys.executable, "-I", str(private / "peer_client.py"), target, str(uid), str(gid)]
    if groups:
        argv.append(",".join(map(str, groups)))
    if cli:
        argv += ["--", *cli]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _as(private: Path, target: str, uid: int, gid: int, groups: tuple[int, ...] = ()) -> dict[str, object]:
    out = _peer(private, target, uid, gid, groups)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused_at_start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(Daemon(tmp_path, args).cli_args(), capture_output=True, text=True, timeout=60)


def test_socket_is_root_group_0660(tmp_path: Path, public_dir: Path) -> None:
    d = _daemon(tmp_path, public_dir, "--socket-group", str(NOBODY))
    try:
        st = d.socket.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (0, NOBODY)
    finally:
        d.stop()


def test_peer_credentials_against_allow_lists(tmp_path: Path, public_dir: Path, private_checkout: Path) -> None:
    d = _daemon(tmp_path, public_dir, "--socket-group", str(NOBODY), "--allow-uid", str(NOBODY),
                "--allow-gid", "4242")
    try:
        assert _as(private_checkout, d.target, NOBODY, NOBODY) == {"ok": True}  # allowed uid
        assert _as(private_checkout, d.target, OUTSIDER, NOBODY, (4242,)) == {"ok": True}  # allowed supplementary group
        assert _as(private_checkout, d.target, OUTSIDER, 4242, (NOBODY,)) == {"ok": True}  # allowed primary group

        denied = _as(private_checkout, d.target, OUTSIDER, NOBODY)  # may connect (socket group), not on any list
        assert denied["code"] == "PERMISSION_DENIED" and denied["error_class"] == "PermissionDenied"
        assert denied["exit_code"] == 42 and f"uid {OUTSIDER} gid {NOBODY}" in str(denied["message"])

        outside = _as(private_checkout, d.target, OUTSIDER, OUTSIDER)  # not even in the socket's group
        assert outside["error_class"] == "PermissionDenied" and outside["exit_code"] == 42
        group = grp.getgrgid(NOBODY).gr_name
        assert f"(owner root, group {group}, mode 0660) lets only root and members of group {group}" in \
            str(outside["message"]) and f"uid {OUTSIDER}" in str(outside["message"])
        listed = _peer(private_checkout, d.target, OUTSIDER, OUTSIDER, cli=("list",))
        assert listed.returncode == 42 and "is `snapd serve` running" not in listed.stderr
        assert f"usermod -aG {group}" in listed.stderr, listed.stderr
    finally:
        d.stop()
    assert '"access.denied"' in d.log.read_text()


def test_private_grpc_socket_refuses_direct_calls(daemon: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{daemon.state_dir / 'api.sock'}") as ch:
        with pytest.raises(grpc.RpcError) as info:
            snapd_pb2_grpc.SnapshotsStub(ch).ListSnapshots(pb.ListSnapshotsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a connection through the daemon's socket" in info.value.details()
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tcp", "127.0.0.1:7071"), "would be served without authentication"),
        (("--tcp", "0.0.0.0:7071", "--insecure-loopback-tcp"), "not a loopback address"),
        (("--tcp", "127.0.0.1:7071", "--tls-cert", "/x.pem"), "missing tls_key, tls_client_ca"),
        (("--insecure-loopback-tcp",), "without a tcp address"),
    ],
)
def test_tcp_is_never_unauthenticated_by_accident(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = _refused_at_start(tmp_path, *args)
    assert out.returncode == 43 and message in out.stderr, out.stderr


def test_insecure_loopback_tcp_when_asked_for(tmp_path: Path) -> None:
    port = _free_port()
    d = Daemon(tmp_path, ("--tcp", f"127.0.0.1:{port}", "--insecure-loopback-tcp")).start()
    try:
        with SnapdClient(f"127.0.0.1:{port}", timeout=10) as c:
            assert list(c.list().snapshots) == []
    finally:
        d.stop()
    assert '"daemon.insecure_tcp"' in d.log.read_text()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def _signed(directory: Path, ca: str, name: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions + "\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server certificate (127.0.0.1) and a client certificate, and a second CA
    with a client certificate of its own (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make test certificates (scripts/bootstrap.sh installs it)")
    directory = tmp_path_factory.mktemp("pki")
    _ca(directory, "ca")
    _signed(directory, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    _signed(directory, "ca", "scheduler", "extendedKeyUsage=clientAuth")
    _ca(directory, "rogue-ca")
    _signed(directory, "rogue-ca", "rogue", "extendedKeyUsage=clientAuth")
    return directory


def test_mutual_tls(tmp_path: Path, pki: Path) -> None:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    d = Daemon(tmp_path, ("--tcp", target, "--tls-cert", str(pki / "server.pem"), "--tls-key",
                          str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.pem"))).start()
    try:
        with SnapdClient(target, timeout=10, tls=TlsFiles(pki / "ca.pem", pki / "scheduler.pem",
                                                          pki / "scheduler.key")) as c:
            assert list(c.list().snapshots) == []

        def refused(channel: grpc.Channel) -> None:
            with channel, pytest.raises(grpc.RpcError) as info:
                snapd_pb2_grpc.SnapshotsStub(channel).ListSnapshots(pb.ListSnapshotsRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        ca = (pki / "ca.pem").read_bytes()
        refused(grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca)))  # no client cert
        rogue = grpc.ssl_channel_credentials(root_certificates=ca, private_key=(pki / "rogue.key").read_bytes(),
                                             certificate_chain=(pki / "rogue.pem").read_bytes())
        refused(grpc.secure_channel(target, rogue))  # client cert from another CA
        refused(grpc.insecure_channel(target))  # plain TCP
    finally:
        d.stop()
    log = d.log.read_text()
    assert '"caller": "tls cn=scheduler' in log and log.count('"api.call"') == 1


def test_config_file_and_command_line_override(tmp_path: Path, public_dir: Path, private_checkout: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'socket_group = "{NOBODY}"\nallow_uid = [{NOBODY}]\ncriu_log_level = 3\n')
    d = _daemon(tmp_path, public_dir, "--config", str(config))
    try:
        assert d.socket.stat().st_gid == NOBODY
        assert _as(private_checkout, d.target, NOBODY, NOBODY) == {"ok": True}
    finally:
        d.stop()
    d = _daemon(tmp_path, public_dir, "--config", str(config), "--socket-group", "0")
    try:
        assert d.socket.stat().st_gid == 0
        assert _as(private_checkout, d.target, NOBODY, NOBODY)["code"] == "UNAVAILABLE"  # no longer in the socket's group
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sockett = '/x'\n", "unknown key(s) sockett"),
        ("criu_log_level = 9\n", "criu_log_level): 9 is not in the range 0<=x<=4"),
        ("allow_uid = 'bob'\n", "allow_uid"),
        ("socket_group = 'no-such-group-here'\n", "no group named 'no-such-group-here'"),
        ("state_dir = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    out = _refused_at_start(tmp_path, "--config", str(config))
    assert out.returncode == 43 and message in out.stderr, out.stderr


def test_systemd_readiness_notification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        d = Daemon(tmp_path).start()
        ready = sock.recv(4096).decode()
        assert d.proc is not None and ready == f"READY=1\nMAINPID={d.proc.pid}"
        d.stop()
        assert sock.recv(4096).decode() == "STOPPING=1"


def test_client_error_names_denied_permission(tmp_path: Path, public_dir: Path, private_checkout: Path) -> None:
    """The CLI exits with PermissionDenied's code for a caller the daemon refuses."""
    d = _daemon(tmp_path, public_dir, "--socket-group", str(NOBODY))
    try:
        out = _peer(private_checkout, d.target, OUTSIDER, NOBODY, cli=("list",))
    finally:
        d.stop()
    assert out.returncode == 42 and f"permission denied: uid {OUTSIDER}" in out.stderr, out.stderr


def test_the_gate_stopping_still_relays_what_the_backend_wrote_last(tmp_path: Path) -> None:
    """The daemon stops the gate right after gRPC: the bytes gRPC wrote last (a drained
    checkpoint's result) are still in the relay then, and must reach the caller whole, not
    be cut with the connection (CI once saw the drained checkpoint's caller get UNAVAILABLE)."""
    payload = bytes(range(256)) * (32 << 12)  # 32 MiB: far more than the socket buffers hold
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.bind(str(tmp_path / "backend.sock"))
    backend.listen(1)
    gate = Gate(tmp_path / "public.sock", 0, tmp_path / "backend.sock", AccessPolicy(), PeerTags())
    gate.start()
    caller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    caller.connect(str(tmp_path / "public.sock"))
    relayed, _ = backend.accept()
    writer = threading.Thread(target=lambda: (relayed.sendall(payload), relayed.close()))
    writer.start()  # blocks until the caller reads: the socket buffers hold a fraction of it
    stopper = threading.Thread(target=gate.stop)
    stopper.start()  # while most of the payload is still to be relayed
    received = bytearray()
    while chunk := caller.recv(1 << 20):
        received += chunk
    caller.close()  # as a gRPC client does at the end of its stream: the relay ends
    writer.join(30)
    stopper.join(30)
    assert not stopper.is_alive()
    assert len(received) == len(payload) and received == payload
    backend.close()
