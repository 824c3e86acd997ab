"""`snapd ops` and `snapd cancel`: the operations a daemon is running (`snapd ps` lists instances:
cmd_instances.py)."""

from __future__ import annotations

import sys

import click

from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.client import phase_name
from snapd_client.output import human_bytes

# `snapd cancel` when the operation did not accept the cancel (past its commit point, or not running)
EXIT_NOT_CANCELLED = 1


@cli.command()
@common_options
@click.pass_context
def ops(ctx: click.Context) -> None:
    """List the operations running now, with their phase and progress (`snapd ps` lists instances).

    \b
    Examples:
      snapd ops
      snapd ops --json
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            resp = client.operations()

        def human() -> None:
            click.echo(f"{'OPERATION':<16} {'KIND':<11} {'RUNNING':>8}  {'PHASE':<14} {'PROGRESS':<24} TARGET")
            for op in resp.operations:
                p = op.progress
                done = (f"{human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}" if p.bytes_total
                        else p.message[:24])
                target = op.snapshot_id or ("pids " + ",".join(map(str, op.pids)) if op.pids else "-")
                phase = phase_name(p.phase) if op.HasField("progress") else "-"
                click.echo(f"{op.operation_id:<16} {op.kind:<11} {op.running_seconds:>7.1f}s  {phase:<14} "
                           f"{done or '-':<24} {target}")
            click.echo(f"{len(resp.operations)} operation(s) running")

        c.emit(resp, human)

    run(ctx, action)


@cli.command()
@click.argument("operation_id", metavar="OPERATION")
@common_options
@click.pass_context
def cancel(ctx: click.Context, operation_id: str) -> None:
    """Cancel a running checkpoint or restore (ids from `snapd ops` or a progress event).

    Before its commit point it rolls back (exit 0); past it, or when it is not running, it
    is left alone (exit 1). Either way the answer says which.

    \b
    Examples:
      snapd cancel op-3f2a9c1b7d40
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            answer = client.cancel(operation_id)
        c.emit(answer, lambda: click.echo(answer.detail))
        if not answer.cancelled:
            sys.exit(EXIT_NOT_CANCELLED)

    run(ctx, action)
