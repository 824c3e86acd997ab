"""Servers with live connections: established TCP (a real HTTP keep-alive client connected
during the checkpoint), file locks, unix sockets to processes outside the tree."""

from __future__ import annotations

import fcntl
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Daemon, Workloads, ask, gone, snapd, wait_for


def _get(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/count")
    return int(conn.getresponse().read())


def test_established_tcp_connections_closed_at_restore(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("httpserver.py")
    port = int(report.read_text().split()[1])
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _get(kept) == 1  # the connection stays open (HTTP/1.1 keep-alive)

    refused = snapd(daemon, "checkpoint", str(pid), "--json")
    assert refused.returncode == 16 and "--tcp-established" in json.loads(refused.stderr)["message"]
    assert _get(kept) == 2  # refused before anything changed: the server and the connection serve on

    out = snapd(daemon, "checkpoint", str(pid), "--tcp-established", "--name", "web", "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["tcp_established"] is True
    wait_for(lambda: gone(pid), 10, "the checkpointed server to stop")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        _get(kept)  # the client sees its connection end and must reconnect
    assert any(line.startswith(snap["id"]) and "tcp" in line.split()[2] for line in snapd(daemon, "list").stdout
               .splitlines())

    restored = snapd(daemon, "restore", "web")  # default: --tcp close
    assert restored.returncode == 0, restored.stderr
    fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _get(fresh) == 3 and _get(fresh) == 4  # its count went on: state kept, new connections served


def test_established_tcp_connections_reestablished_on_request(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("httpserver.py")
    port = int(report.read_text().split()[1])
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _get(kept) == 1
    assert snapd(daemon, "checkpoint", str(pid), "--tcp-established", "--name", "web").returncode == 0
    wait_for(lambda: gone(pid), 10, "the checkpointed server to stop")
    restored = snapd(daemon, "restore", "web", "--tcp", "reestablish")
    assert restored.returncode == 0, restored.stderr
    assert _get(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) == 2


def test_file_locks_are_kept(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    pid, _ = workloads.start("locker.py", str(locked))

    def held() -> bool:
        with open(locked, "a") as f, open(f"{locked}.posix", "a") as p:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                flock_held = True
            else:
                flock_held = False
            try:
                fcntl.lockf(p, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return flock_held
            return False

    assert held()
    out = snapd(daemon, "checkpoint", str(pid), "--name", "locks")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    assert not held()
    assert snapd(daemon, "restore", "locks").returncode == 0
    assert held()  # the restored process holds both locks again


@pytest.fixture
def log_peer(tmp_path: Path) -> Iterator[socket.socket]:
    """A named datagram socket outside the tree (as syslog's /dev/log)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "log.sock"))
    sock.settimeout(10)
    yield sock
    sock.close()


def test_external_unix_socket_with_ext_unix_sk(daemon: Daemon, workloads: Workloads, tmp_path: Path,
                                               log_peer: socket.socket) -> None:
    pid, report = workloads.start("extsock.py", str(tmp_path / "log.sock"))
    assert ask(pid, report)[1:] == ["1", "ok"] and log_peer.recv(64) == b"ping 1"

    refused = snapd(daemon, "checkpoint", str(pid))
    assert refused.returncode == 16 and "--ext-unix-sk" in refused.stderr
    out = snapd(daemon, "checkpoint", str(pid), "--ext-unix-sk", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ext_unix_sk"] is True
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    assert snapd(daemon, "restore", json.loads(out.stdout)["id"]).returncode == 0
    assert ask(pid, report)[1:] == ["2", "ok"] and log_peer.recv(64) == b"ping 2"  # connected to the name again
