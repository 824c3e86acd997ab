"""The remote tier's commands: `snapd push`, `snapd pull` (registered on cli.py's group when
cli.py imports this module), and what `list --remote` and `gc --remote` print."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from snapd.v1 import snapd_pb2 as pb
from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.client import SnapdClient
from snapd_client.interrupts import Interrupts
from snapd_client.output import ProgressLine, human_bytes


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e9:.2f} GB/s" if seconds > 0 else "-"


@cli.command()
@click.argument("snapshot")
@common_options
@click.pass_context
def push(ctx: click.Context, snapshot: str) -> None:
    """Upload SNAPSHOT to the remote tier: the chunks the bucket lacks, then its manifest.

    \b
    Examples:
      snapd push llama-8b
      snapd push 20261128T0912 --json
    """
    _transfer(ctx, snapshot, SnapdClient.push, lambda r: (
        f"{r.snapshot_id}: already in the bucket, nothing uploaded" if r.already_there else
        f"pushed {r.snapshot_id}: {r.uploaded_chunks} of {r.chunks} chunk(s) uploaded, "
        f"{human_bytes(r.uploaded_bytes)} in {r.duration_seconds:.2f} s ({_rate(r.uploaded_bytes, r.duration_seconds)})"))


@cli.command()
@click.argument("snapshot")
@common_options
@click.pass_context
def pull(ctx: click.Context, snapshot: str) -> None:
    """Download SNAPSHOT from the remote tier: the chunks the local store lacks, verified.

    \b
    Examples:
      snapd pull llama-8b
      snapd pull llama-8b && snapd restore llama-8b
    """
    _transfer(ctx, snapshot, SnapdClient.pull, lambda r: (
        f"{r.snapshot_id}: already in the local store, nothing fetched" if r.already_there else
        f"pulled {r.snapshot_id}: {r.fetched_chunks} of {r.chunks} chunk(s) fetched, "
        f"{human_bytes(r.fetched_bytes)} in {r.duration_seconds:.2f} s ({_rate(r.fetched_bytes, r.duration_seconds)})"))


def _transfer(ctx: click.Context, snapshot: str, call: Callable[..., Any], describe: Callable[[Any], str]) -> None:
    """Run a push or pull with a progress line (Ctrl-C cancels it) and print its result."""
    def action(c: Ctx) -> None:
        with c.client() as client, ProgressLine() as bar:
            r = call(client, snapshot, on_progress=bar, on_interrupt=Interrupts(client, bar.stop))
        c.emit(r, lambda: click.echo(describe(r)))

    run(ctx, action)


def print_remote_list(resp: pb.ListSnapshotsResponse) -> None:
    click.echo(f"{'ID':<30} {'NAME':<20} {'HOST':<16} {'RAW':>10} {'STORED':>10}  CREATED")
    for s in resp.snapshots:
        created = s.created.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{s.id:<30} {s.name or '-':<20} {s.hostname[:16]:<16} {human_bytes(s.raw_bytes):>10} "
                   f"{human_bytes(s.stored_bytes):>10}  {created}")
    click.echo(f"{len(resp.snapshots)} remote snapshot(s): {human_bytes(resp.store_raw_bytes)} raw, "
               f"{human_bytes(resp.store_disk_bytes)} of chunks in the bucket")


def print_remote_gc(r: pb.CollectGarbageResponse) -> None:
    verb = "would remove" if r.dry_run else "removed"
    click.echo(f"remote: {r.remote_snapshots} snapshot(s) kept; {verb} {r.chunks} unreferenced chunk(s), "
               f"{human_bytes(r.bytes)}, and {r.stale_locks} stale lock(s)")
