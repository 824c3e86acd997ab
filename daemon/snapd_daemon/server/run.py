"""`snapd run`: start a server as the init of a pid namespace of its own, so that its
snapshots restore any number of times at once.

The supervisor (this process, in the host's namespaces) puts its next child in
a new pid namespace, where it is pid 1: ``host/nsinit.py``, which runs the
command as its child. That init first moves into a private mount namespace
with a /proc of its pid namespace (``host/mountns.py``: CUDA cannot start in
a pid namespace that reads the host's /proc). With ``--netns`` it also moves
into a new network namespace with only ``lo`` (up), and each ``--publish`` starts a relay
(``host/portfwd.py``) from a host port to a port inside. The supervisor passes
on termination signals, and exits with the command's status; with ``--name``
it keeps the init's host pid in RUN_DIR/NAME.pid meanwhile (systemd's
``PIDFile=``, or ``snapd checkpoint "$(cat RUN_DIR/NAME.pid)"``). The pid to
checkpoint is the init's: CRIU then dumps the namespaces, and every restore
makes fresh ones.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from snapd_daemon.host import mountns, namespaces, portfwd
from snapd_daemon.host.namespaces import CLONE_NEWNET, CLONE_NEWPID
from snapd_daemon.host.nsinit import exit_code, forward_signals

DEFAULT_RUN_DIR = Path("/run/gpu-snapd/run")


class RunFailed(click.ClickException):
    exit_code = 1


def parse_publish(spec: str) -> tuple[str, int]:
    """"[HOST:]HOSTPORT:PORT" -> ("HOST:HOSTPORT", PORT); HOST defaults to 127.0.0.1."""
    outside, sep, inside = spec.rpartition(":")
    if not sep or not inside.isdigit() or not 0 < int(inside) < 65536:
        raise click.BadParameter(f"{spec!r} is not [HOST:]HOSTPORT:PORT", param_hint="--publish")
    listen = outside if ":" in outside.strip("[]") or outside.startswith("[") else f"127.0.0.1:{outside}"
    try:
        portfwd.split_address(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--publish") from None
    return listen, int(inside)


@dataclass
class Init:
    """The namespace's init, forked and holding: its namespaces are made, but it has not yet
    opened its stdio again (mountns.reopen_inherited) nor started the command."""

    pid: int
    go: int  # a byte written here lets it go on
    report: int  # its start error, or EOF once the command runs

    def release(self) -> None:
        """Let it open its stdio and run the command. Raises RunFailed with its start error."""
        os.write(self.go, b"\0")
        os.close(self.go)
        self.wait_started()

    def wait_started(self) -> None:
        with os.fdopen(self.report, "rb") as ready:
            error = ready.read().decode(errors="replace")
        if error:
            os.waitpid(self.pid, 0)
            raise RunFailed(error)


def start_init(command: tuple[str, ...], netns: bool) -> Init:
    """Fork the namespace's init (to run ``command`` once released). Raises RunFailed."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    read_end, write_end = os.pipe()  # close-on-exec: EOF once the init runs
    go_read, go_write = os.pipe()
    try:
        namespaces.unshare(CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                _become_init(command, netns, write_end, go_read)
        finally:
            namespaces.setns(own, CLONE_NEWPID)  # later children (the relays) stay in the host's
    except OSError as exc:
        os.close(go_write)
        os.close(read_end)
        raise RunFailed(f"cannot create a pid namespace ({exc}); `snapd run` needs root (CAP_SYS_ADMIN)") from exc
    finally:
        os.close(own)
        os.close(write_end)
        os.close(go_read)
    return Init(pid, go_write, read_end)


def _become_init(command: tuple[str, ...], netns: bool, report: int, go: int) -> None:
    try:
        mountns.private_proc()
        if netns:
            namespaces.unshare(CLONE_NEWNET)
            namespaces.loopback_up()
        # the supervisor writes its banner on the stdio we share first; opened again, a log file
        # then goes on after it (the offset is kept) instead of writing over it
        if os.read(go, 1) != b"\0":
            os._exit(1)  # the supervisor is gone
        mountns.reopen_inherited()
        os.setsid()  # CRIU dumps a session whose leader is inside the namespace
        os.execv(sys.executable, [sys.executable, "-m", "snapd_daemon.host.nsinit", *command])
    except BaseException as exc:  # the child never returns into the supervisor's code
        os.write(report, f"cannot start the namespace's init: {exc}".encode())
    os._exit(127)


def supervise(command: tuple[str, ...], netns: bool, publish: list[tuple[str, int]], pid_file: Path | None) -> int:
    """Run ``command`` under its own init until it exits; its exit status."""
    init = start_init(command, netns)
    pid = init.pid
    try:
        relays = [portfwd.publish(pid, listen, port) for listen, port in publish]
    except portfwd.PublishError as exc:
        os.kill(pid, signal.SIGKILL)
        init.wait_started()  # its own start error, if it had one, says more
        raise RunFailed(f"cannot publish a port: {exc}") from exc
    shown = "".join(f"; {r.address} -> port {r.port} inside" for r in relays)
    click.echo(f"snapd run: pid {pid} is the init of its own pid namespace"
               f"{' and network namespace' if netns else ''} (checkpoint this pid){shown}", err=True)
    try:
        init.release()
        if pid_file:  # once the init runs nsinit: a checkpoint of the pid it names then dumps the server's tree
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{pid}\n")
        forward_signals(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        if pid_file:
            pid_file.unlink(missing_ok=True)
    return exit_code(status)


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--name", default="", help="Keep the init's host pid in RUN_DIR/NAME.pid while it runs.")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_RUN_DIR,
              show_default=True, help="Where --name's pid file goes.")
@click.option("--netns", is_flag=True, help="Also give it a network namespace of its own (only lo), so that "
              "its restored copies each listen on their own address.")
@click.option("--publish", "publish", multiple=True, metavar="[HOST:]HOSTPORT:PORT",
              help="With --netns: relay HOST:HOSTPORT (HOST 127.0.0.1 unless given) to PORT inside (repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(name: str, run_dir: Path, netns: bool, publish: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND as the only child of the init of its own pid namespace (as root), so that
    snapshots of it (checkpoint the printed pid) can be restored many times at once.

    The line naming that pid goes to stderr before COMMAND starts, so a log that takes both
    (`>run.log 2>&1`) keeps it first.

    \b
    Examples:
      snapd run --name llama -- python -m vllm.entrypoints.openai.api_server --model ./llama
      snapd checkpoint "$(cat /run/gpu-snapd/run/llama.pid)" --name llama
      snapd run --netns --publish 8000:8000 -- python server.py >run.log 2>&1 &
    """
    if publish and not netns:
        raise click.UsageError("--publish needs --netns")
    if name and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise click.BadParameter(f"{name!r}: letters, digits, '.', '_' and '-' only", param_hint="--name")
    mappings = [parse_publish(p) for p in publish]
    sys.exit(supervise(command, netns, mappings, run_dir / f"{name}.pid" if name else None))
