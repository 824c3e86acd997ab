"""A tree whose stdout/stderr lead to a reader outside it (a pipe to the shell or
scheduler that started it, a unix socket as journald's) keeps running after a
restore, writing to the restore log."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from harness import WORKLOADS, Daemon, gone, start_piped, wait_for
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.host.stdio import OutwardEnd, outward_stdio, unix_peers


def _ticks(path: Path, pid: int) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith(f"{pid} tick "))


def _start_socketed(tmp_path: Path) -> tuple[int, Path, subprocess.Popen]:
    """ticker.py with stdout and stderr on a unix stream socket whose peer is held by
    a reader process outside the ticker's tree (the shape of journald's stdout streams)."""
    report, out = tmp_path / "ticker.report", tmp_path / "socketed.out"
    reader = subprocess.Popen(
        [sys.executable, "-c", SOCKET_READER, str(WORKLOADS / "ticker.py"), str(report), str(out)],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(report.exists, 30, "the ticker to start")
    return int(report.read_text()), out, reader


SOCKET_READER = """
import socket, subprocess, sys
ours, theirs = socket.socketpair()
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], stdout=theirs, stderr=theirs, start_new_session=True)
theirs.close()
with open(sys.argv[3], "ab", buffering=0) as out:
    while data := ours.recv(4096):
        out.write(data)
"""


def test_outward_stdio_is_found() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(["sleep", "30"], stdin=in_r, stdout=out_w, stderr=theirs)
    try:
        assert unix_peers()[os.fstat(theirs.fileno()).st_ino] == os.fstat(ours.fileno()).st_ino
        expected = [OutwardEnd("pipe", os.fstat(in_r).st_ino, writes=False),
                    OutwardEnd("pipe", os.fstat(out_w).st_ino, writes=True),
                    OutwardEnd("socket", os.fstat(theirs.fileno()).st_ino, writes=True)]
        assert sorted(outward_stdio([child.pid]), key=str) == sorted(expected, key=str)
        assert expected[2].criu_external == f"unix[{os.fstat(theirs.fileno()).st_ino}]"
        # with this process, which holds the other ends, none of them is outward
        assert not set(outward_stdio([child.pid, os.getpid()])) & set(expected)
    finally:
        child.kill()
        child.wait()
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        ours.close()
        theirs.close()


def test_restored_tree_writes_to_the_restore_log(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                 workloads) -> None:
    pid, piped = start_piped(tmp_path)
    wait_for(lambda: _ticks(piped, pid) >= 3, 10, "ticks through the pipe")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed ticker to stop")
    result = client.restore(snap.id)
    log = daemon.state_dir / "logs" / f"{snap.id}.log"
    assert result.log_path == str(log)
    wait_for(lambda: log.exists() and _ticks(log, pid) >= 10, 10, "ticks in the restore log")
    assert not gone(pid)  # without the redirection the first tick kills it with SIGPIPE
    assert f"{pid} err " in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o640"


PIPES_READER = """
import subprocess, sys, threading
child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
def copy(source, path):
    with open(path, "ab", buffering=0) as out:
        while data := source.read1(4096):
            out.write(data)
threads = [threading.Thread(target=copy, args=(child.stdout, sys.argv[3])),
           threading.Thread(target=copy, args=(child.stderr, sys.argv[4]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_separate_stdout_and_stderr_pipes_append_to_one_log(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                             workloads) -> None:
    """A scheduler's Popen(stdout=PIPE, stderr=PIPE): two outward pipes. Both go to the
    log, which is appended to (earlier content kept), restore after restore."""
    report = tmp_path / "ticker.report"
    reader = subprocess.Popen([sys.executable, "-c", PIPES_READER, str(WORKLOADS / "ticker.py"), str(report),
                               str(tmp_path / "out"), str(tmp_path / "err")], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=reader.wait, daemon=True).start()
    wait_for(report.exists, 30, "the ticker to start")
    pid = int(report.read_text())
    snap = client.checkpoint(pid)
    assert len(client.get(snap.id).processes) == 1
    log = daemon.state_dir / "logs" / "two-pipes.log"
    log.parent.mkdir()
    log.write_text("written before the restores\n")
    for _ in range(2):
        wait_for(lambda: gone(pid), 10, "the ticker to stop")
        client.restore(snap.id, log_name=log.name, wait_for_exit_seconds=10)
        before = _ticks(log, pid)
        wait_for(lambda before=before: _ticks(log, pid) >= before + 5, 10, "ticks in the log")
        workloads.kill_all()
    lines = log.read_text().splitlines()
    assert lines[0] == "written before the restores"
    assert all(re.fullmatch(rf"{pid} (tick|err) \d+", line) for line in lines[1:]), lines
    assert {line.split()[1] for line in lines[1:]} == {"tick", "err"}


def test_log_name_is_confined_to_the_log_directory(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                   workloads) -> None:
    pid, _ = start_piped(tmp_path)
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed ticker to stop")
    for bad in ("../escape", "a/b", ".hidden", "x" * 129):
        with pytest.raises(SnapdClientError) as info:
            client.restore(snap.id, log_name=bad)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "log_name" in info.value.message
    logs = daemon.state_dir / "logs"
    logs.mkdir()
    (logs / "link").symlink_to(tmp_path / "elsewhere")
    os.mkfifo(logs / "fifo")
    for name, reason in (("link", "it is a symbolic link"), ("fifo", "it is a FIFO with no reader")):
        with pytest.raises(SnapdClientError) as info:
            client.restore(snap.id, log_name=name)
        err = info.value
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "RestoreLogUnavailable"
        assert f"{logs / name}" in err.message and reason in err.message and gone(pid)
    assert not (tmp_path / "elsewhere").exists()
    result = client.restore(snap.id, log_name="ticker.log")
    wait_for(lambda: _ticks(logs / "ticker.log", pid) >= 3, 10, "ticks in the named log")
    assert result.log_path == str(logs / "ticker.log")


def test_stdout_on_an_outside_unix_socket(daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads) -> None:
    pid, socketed, reader = _start_socketed(tmp_path)
    try:
        wait_for(lambda: _ticks(socketed, pid) >= 3, 10, "ticks through the socket")
        snap = client.checkpoint(pid)  # plain CRIU refuses: "External socket is used"
        wait_for(lambda: gone(pid), 10, "the checkpointed ticker to stop")
        result = client.restore(snap.id, log_name="socketed.log")
        wait_for(lambda: _ticks(Path(result.log_path), pid) >= 5, 10, "ticks in the restore log")
        assert f"{pid} err " in Path(result.log_path).read_text() and not gone(pid)
    finally:
        reader.kill()
        reader.wait()


def test_log_file_that_grew_since_the_dump(client: SnapdClient, tmp_path: Path, workloads) -> None:
    """CRIU refuses a file whose size changed since the dump (unless it is open
    O_APPEND); for files open write-only snapd drops that check, so a server whose
    output goes to a file (`server > log`) restores after its original (left
    running) or its restored self went on writing."""
    logfile, report = tmp_path / "server.log", tmp_path / "filelog.report"
    writer = subprocess.Popen([sys.executable, str(WORKLOADS / "filelog.py"), str(logfile), str(report)],
                                cwd=WORKLOADS, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=writer.wait, daemon=True).start()
    wait_for(report.exists, 30, "the writer to start")
    pid = int(report.read_text())
    snap = client.checkpoint(pid, leave_running=True)
    for _ in range(2):  # the original grows the log, then the restored process does
        size = logfile.stat().st_size
        wait_for(lambda size=size: logfile.stat().st_size > size + 100, 10, "the log to grow")
        workloads.kill_all()
        wait_for(lambda: gone(pid), 10, "the writer to exit")
        written = logfile.read_text()
        client.restore(snap.id, wait_for_exit_seconds=10)
        wait_for(lambda written=written: len(logfile.read_text()) > len(written) + 100, 10, "the restored writer")
        assert logfile.read_text().startswith(written)  # it goes on at the end, overwriting nothing
        assert not gone(pid)
