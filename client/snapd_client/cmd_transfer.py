"""`snapd export` and `snapd import`: a snapshot as one verifiable stream, to move it between hosts."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click
import grpc

from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.client import SnapdClientError
from snapd_client.output import human_bytes

# StoreFull's exit code: the daemon's, for a file system that filled up on the client's side
EXIT_SPACE_FULL = 18


@cli.command("export")
@click.argument("snapshot")
@click.option("-o", "--output", required=True, metavar="FILE|-",
              help="Where the stream goes: a file (written whole or not at all), or - for stdout.")
@common_options
@click.pass_context
def export_cmd(ctx: click.Context, snapshot: str, output: str) -> None:
    """Write SNAPSHOT (id, unique id prefix, or name) as one stream: its manifest and every
    chunk it needs, compressed as stored, ending with a digest of the whole (docs/scheduler.md,
    "Moving a snapshot"). `snapd import` on any host takes it in.

    \b
    Examples:
      snapd export llama-8b -o llama-8b.snapd
      snapd export llama-8b -o - | ssh gpu-host-7 snapd import -
    """
    if output == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write a binary stream to a terminal; give -o FILE or a pipe")

    def action(c: Ctx) -> None:
        with c.client() as client:
            if output == "-":
                written = client.export_snapshot(snapshot, sys.stdout.buffer)
                sys.stdout.buffer.flush()
                got = client.get(snapshot)
            else:
                written = _export_file(client.export_snapshot, snapshot, Path(output))
                got = client.get(snapshot)
        summary = {"snapshot_id": got.id, "bytes": written, "output": output}
        if output == "-":
            click.echo(f"exported {got.id}: {human_bytes(written)}", err=True)
        else:
            c.emit(summary, lambda: click.echo(f"exported {got.id} to {output}: {human_bytes(written)}"))

    run(ctx, action)


def _export_file(export: Callable[[str, BinaryIO], int], snapshot: str, path: Path) -> int:
    """Write the stream to a temporary file beside ``path`` (mode 0600: it holds process memory),
    renamed over it only when complete; removed on any failure. A full file system is
    ExportSpaceFull (exit 18, as the daemon's StoreFull), another write error exit 1."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            written = export(snapshot, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        size = tmp.stat().st_size if tmp.exists() else 0
        raise _write_error(exc, snapshot, path, size) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return written


def _write_error(exc: OSError, snapshot: str, path: Path, written: int) -> SnapdClientError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SnapdClientError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"no space left in {path.parent} while exporting snapshot {snapshot} there: {written} bytes written "
            f"before it ran out, {shutil.disk_usage(path.parent).free} free; the partial file was removed. Free "
            "space there or export elsewhere (`-o -` streams it).", "ExportSpaceFull", EXIT_SPACE_FULL)
    return SnapdClientError(grpc.StatusCode.UNKNOWN, f"cannot write the export to {path}: {exc.strerror or exc}; "
                            "the partial file was removed.", "ExportFailed", 1)


@cli.command("import")
@click.argument("source", metavar="FILE|-")
@common_options
@click.pass_context
def import_cmd(ctx: click.Context, source: str) -> None:
    """Take in an export stream from FILE (- for stdin).

    Every chunk is checked against its hash; only the chunks this store lacks are stored; the
    snapshot appears only once all of it is durable, so a corrupt or cut stream leaves
    nothing behind (exit 51 ImportInvalid). Importing a snapshot the store already has
    changes nothing, and says so.

    \b
    Examples:
      snapd import llama-8b.snapd
      ssh gpu-host-3 snapd export llama-8b -o - | snapd import -
    """

    if source != "-" and not Path(source).is_file():
        raise click.BadParameter(f"{source!r} is not a file", param_hint="FILE")
    if source == "-" and sys.stdin.isatty():
        raise click.UsageError("refusing to read a binary stream from a terminal; give FILE or pipe one in")

    def action(c: Ctx) -> None:
        stream: BinaryIO
        with contextlib.ExitStack() as stack:
            stream = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
            with c.client() as client:
                snap = client.import_snapshot(stream)
        named = f"{snap.id}{f' ({snap.name})' if snap.name else ''}"
        c.emit(snap, lambda: click.echo(
            f"{named} is already in this store: nothing imported" if snap.already_present else
            f"imported {named}: {human_bytes(snap.raw_bytes)} raw, {human_bytes(snap.new_bytes)} new to this store"))

    run(ctx, action)
