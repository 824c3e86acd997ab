"""`snapd ps`, `stop`, `logs`, `events`: the instances restores made, in podman's habits."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp

from snapd.v1 import snapd_pb2 as pb
from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.client import phase_name, state_name
from snapd_client.output import as_dict, human_bytes

# `snapd logs -f`: how often the file is read for more, and the instance asked whether it still runs
_FOLLOW_SECONDS = 0.2
_LIVE_CHECK_SECONDS = 1.0
_LIVE = ("starting", "ready", "running")


def _when(ts: Timestamp, present: bool) -> str | None:
    return ts.ToJsonString() if present else None


def exit_status(inst: pb.Instance) -> dict[str, Any] | None:
    """None while it runs; else known, and the exit code or the signal's name."""
    if not inst.HasField("exit_status"):
        return None
    status = inst.exit_status
    if not status.known:
        return {"known": False, "code": None, "signal": None}
    if status.signal:
        return {"known": True, "code": None, "signal": signal.Signals(status.signal).name}
    return {"known": True, "code": status.code, "signal": None}


def instance_json(inst: pb.Instance) -> dict[str, Any]:
    """One instance as `snapd ps --json` shows it."""
    return {
        "id": inst.id, "snapshot": inst.snapshot_id, "name": inst.snapshot_name, "state": state_name(inst.state),
        "root_pid": inst.root_pid, "pids": [p.pid for p in inst.processes], "gpus": list(inst.gpus),
        "cgroup": inst.cgroup, "ports": [{"port": p.port, "address": p.address} for p in inst.published],
        "created": _when(inst.created, inst.HasField("created")), "ready": _when(inst.ready, inst.HasField("ready")),
        "ended": _when(inst.ended, inst.HasField("ended")), "exit_status": exit_status(inst),
        "sandbox": {"pid": inst.sandbox.pid, "cgroup": inst.sandbox.cgroup} if inst.HasField("sandbox") else None,
        "ready_seconds": inst.ready_seconds or None,
    }


def status_text(inst: pb.Instance) -> str:
    """The STATUS column: how long it has run, or how it ended."""
    state = state_name(inst.state)
    if state in _LIVE:
        return f"{state} {time.time() - inst.created.ToNanoseconds() / 1e9:.0f} s"
    status = exit_status(inst) or {}
    how = ("status unknown" if not status.get("known") else
           f"signal {status['signal']}" if status.get("signal") else f"code {status.get('code')}")
    return f"{state} ({how})"


@cli.command()
@click.option("-a", "--all", "everything", is_flag=True, help="Also the exited and stopped instances the daemon keeps.")
@common_options
@click.pass_context
def ps(ctx: click.Context, everything: bool) -> None:
    """List instances: the process trees restores made (each replica one), oldest first.

    Running operations (checkpoints, restores in progress) are listed by `snapd ops`.

    \b
    Examples:
      snapd ps
      snapd ps -a --json
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            found = list(client.instances(everything).instances)

        def human() -> None:
            click.echo(f"{'INSTANCE':<15} {'SNAPSHOT':<29} {'NAME':<16} {'ROOT PID':>8}  {'STATUS':<26} "
                       f"{'READY IN':>8}  PORTS")
            for i in found:
                ports = ", ".join(f"{p.address}->{p.port}" for p in i.published) or "-"
                ready = f"{i.ready_seconds:.2f} s" if i.ready_seconds else "-"
                click.echo(f"{i.id:<15} {i.snapshot_id:<29} {i.snapshot_name or '-':<16} {i.root_pid:>8}  "
                           f"{status_text(i):<26} {ready:>8}  {ports}")

        c.emit({"instances": [instance_json(i) for i in found]}, human)

    run(ctx, action)


@cli.command()
@click.argument("instance")
@click.option("-t", "--time", "grace", type=click.IntRange(0, 3600), default=None,
              help="Seconds to wait after SIGTERM before SIGKILL [default: 10].")
@common_options
@click.pass_context
def stop(ctx: click.Context, instance: str, grace: int | None) -> None:
    """Stop INSTANCE (an id or its unique start): SIGTERM to its whole tree, SIGKILL after the grace.

    Returns once every process of the tree is gone (and its GPU memory is freed).

    \b
    Examples:
      snapd stop in-3f2a9c1b7d40
      snapd stop 3f2a --time 30
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            inst = client.stop_instance(instance, grace)
        c.emit(instance_json(inst), lambda: click.echo(f"{inst.id}: {status_text(inst)}"))

    run(ctx, action)


@cli.command()
@click.argument("instance")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what it writes until it ends.")
@common_options
@click.pass_context
def logs(ctx: click.Context, instance: str, follow: bool) -> None:
    """Print the log of INSTANCE: the file its stdout/stderr pipes whose reader was gone write to
    (`snapd restore --log-name`). The file is on the daemon's host: run this there.

    \b
    Examples:
      snapd logs in-3f2a9c1b7d40
      snapd logs 3f2a -f
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            inst = client.instance(instance)
            if not inst.log_path:
                raise click.ClickException(f"instance {inst.id} has no log: its tree had no stdout/stderr pipe "
                                           "to a process outside it at checkpoint")
            try:
                log = open(Path(inst.log_path), "rb")
            except OSError as exc:
                raise click.ClickException(f"cannot read {inst.log_path} (on the daemon's host): "
                                           f"{exc.strerror}") from None
            with log:
                _copy(log)
                checked = time.monotonic()
                while follow and state_name(inst.state) in _LIVE:
                    time.sleep(_FOLLOW_SECONDS)
                    _copy(log)
                    if time.monotonic() - checked >= _LIVE_CHECK_SECONDS:
                        inst, checked = client.instance(inst.id), time.monotonic()
                _copy(log)

    run(ctx, action)


def _copy(log: Any) -> None:
    while data := log.read(1 << 16):
        sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def event_text(ev: pb.Event) -> str:
    when = ev.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
    if ev.HasField("instance"):
        i = ev.instance
        return f"{ev.sequence:>6} {when} instance  {i.id} {status_text(i)} (snapshot {i.snapshot_id})"
    op = ev.operation
    line = f"{ev.sequence:>6} {when} operation {op.operation_id} {op.kind} {op.state}"
    if op.HasField("progress"):
        p = op.progress
        line += f" {phase_name(p.phase)}" + (f" {human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}"
                                             if p.bytes_total else "") + (f" {p.message}" if p.message else "")
    if op.error:
        line += f": {op.error} (exit {op.exit_code}): {op.message}"
    return line


@cli.command()
@click.option("--after", type=click.IntRange(0), default=0, metavar="SEQUENCE",
              help="Replay the events after this one that the daemon still holds, then follow [default: new only].")
@click.option("--stream-id", default="", help="The stream_id SEQUENCE came from (refused if the daemon restarted).")
@common_options
@click.pass_context
def events(ctx: click.Context, after: int, stream_id: str) -> None:
    """Follow the daemon's events: operation phases and instance state changes, numbered.

    With --json, one JSON object per line.

    \b
    Examples:
      snapd events
      snapd events --json --after 1200 --stream-id ev-5c1f0e2a9b3d
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            for ev in client.events(after, stream_id):
                click.echo(json.dumps(as_dict(ev), sort_keys=True) if c.as_json else event_text(ev))

    run(ctx, action)
