"""The `snapd` command line for callers of the daemon: every command here talks to it over gRPC.

This package imports grpcio and protobuf (and click), never the daemon; the daemon's
`snapd` entry point adds `serve` and `exit-codes` to this group.

Exit codes: 0 success, 2 usage error, 3 daemon unreachable, and one code per
daemon error class (listed by `snapd exit-codes` and in the README).
Ctrl-C during `checkpoint` or `restore`: see interrupts.py.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from google.protobuf.message import Message

from snapd_client.client import (
    DEFAULT_TARGET,
    CgroupSpec,
    SnapdClient,
    SnapdClientError,
    TlsFiles,
)
from snapd_client.interrupts import Interrupts
from snapd_client.output import ProgressLine, as_dict, human_bytes

# ChunkCorrupt's exit code (DATA_LOSS): `snapd fsck` found damage
_EXIT_DATA_LOSS = 24
_REPAIR = ("checkpoint the same source again to store the damaged chunks anew (that repairs every snapshot "
           "using them), or `snapd rm` the damaged snapshot(s)")


class Ctx:
    def __init__(self, target: str, as_json: bool, tls: TlsFiles | None) -> None:
        self.target = target
        self.as_json = as_json
        self.tls = tls

    def client(self) -> SnapdClient:
        return SnapdClient(self.target, tls=self.tls)

    def emit(self, msg: Message | dict[str, Any], human: Callable[[], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(as_dict(msg) if isinstance(msg, Message) else msg, indent=2, sort_keys=True))
        else:
            human()


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        parsed[key] = value
    return parsed


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(_ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """Bytes from "17179869184", "16G", "512M" (binary units); 0 when not given."""
    if not value:
        return 0
    number, unit = value[:-1], value[-1].upper()
    if unit not in _SIZE_UNITS:
        number, unit = value, ""
    if not number.isdigit():
        raise click.BadParameter(f"{value!r} is not a size like 17179869184, 16G or 512M", param=param)
    return int(number) * _SIZE_UNITS[unit]


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def _run(ctx: click.Context, as_json: bool, action: Callable[[Ctx], None]) -> None:
    c = Ctx(ctx.obj["target"], as_json or ctx.obj["json"], ctx.obj["tls"])
    try:
        action(c)
    except SnapdClientError as err:
        _fail(c, err.error_class or err.code.name, err.message, err.exit_code)
    except KeyboardInterrupt:
        click.echo("snapd: interrupted; the call was cancelled (an operation the daemon had started rolls back "
                   "unless it was past its commit point)", err=True)
        sys.exit(130)


def _fail(c: Ctx, error: str, message: str, exit_code: int) -> NoReturn:
    """Say why on stderr (a JSON object with --json) and exit with ``exit_code``."""
    if c.as_json:
        click.echo(json.dumps({"error": error, "message": message, "exit_code": exit_code}), err=True)
    else:
        click.echo(f"snapd: {'cancelled' if error == 'Cancelled' else 'error'}: {message}", err=True)
    sys.exit(exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "SNAPD"})
@click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="SNAPD_TARGET",
              help="Daemon address: unix:///path/to.sock or 127.0.0.1:PORT.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (any command).")
@click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_CA",
              help="Mutual TLS to a TCP target: CA of the daemon's certificate (with --tls-cert, --tls-key).")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_CERT",
              help="This client's PEM certificate.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_KEY",
              help="This client's PEM private key.")
@click.pass_context
def cli(ctx: click.Context, target: str, as_json: bool, tls_ca: Path | None, tls_cert: Path | None,
        tls_key: Path | None) -> None:
    """snapd: checkpoint warmed (GPU) processes and restore them in seconds."""
    given = [f for f in (tls_ca, tls_cert, tls_key) if f]
    if given and len(given) != 3:
        raise click.UsageError("--tls-ca, --tls-cert and --tls-key go together")
    tls = TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key) if tls_ca and tls_cert and tls_key else None
    ctx.obj = {"target": target, "json": as_json, "tls": tls}


@cli.command()
@click.argument("pid", type=int)
@click.option("--name", default="", help="Snapshot name (restore accepts it instead of the id).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label to store (repeatable).")
@click.option("--leave-running", is_flag=True, help="Keep the process running after the checkpoint.")
@click.option("--pre-hook", default="", metavar="COMMAND",
              help="Command the daemon runs before freezing anything (shell-style words, no shell).")
@click.option("--hook-timeout", type=click.IntRange(0, 3600), default=0, help="Seconds for the hook (default 60).")
@click.option("--cuda-lock-timeout-ms", type=click.IntRange(0, 2**32 - 1), default=0,
              help="How long CUDA may wait for in-flight GPU work (default 30000).")
@click.option("--keep-hot", is_flag=True, help="Also keep the snapshot decompressed in RAM for a fast next restore.")
@click.option("--push/--no-push", default=None, help="Upload it to the remote tier in the background once durable "
              "[default: the daemon's push_after_checkpoint].")
@_json_option
@click.pass_context
def checkpoint(ctx: click.Context, pid: int, name: str, labels: tuple[str, ...], leave_running: bool,
               pre_hook: str, hook_timeout: int, cuda_lock_timeout_ms: int, keep_hot: bool, push: bool | None,
               as_json: bool) -> None:
    """Checkpoint process tree PID (with its GPU state) into a new snapshot."""
    parsed = _pairs(labels, "--label")

    def action(c: Ctx) -> None:
        bar = ProgressLine()
        with c.client() as client:
            interrupts = Interrupts(client, bar.done)
            snap = client.checkpoint(pid, name=name, labels=parsed, leave_running=leave_running,
                                     pre_checkpoint_hook=shlex.split(pre_hook), hook_timeout_seconds=hook_timeout,
                                     cuda_lock_timeout_ms=cuda_lock_timeout_ms, keep_hot=keep_hot, push=push, on_progress=bar,
                                     on_interrupt=interrupts)
        bar.done()
        interrupts.completed()
        total = time.monotonic() - bar.started
        c.emit(snap, lambda: click.echo(
            f"snapshot {snap.id}{f' ({snap.name})' if snap.name else ''}: {len(snap.processes)} process(es), "
            f"{human_bytes(snap.raw_bytes)} in {total:.2f} s (dumped after {snap.checkpoint_seconds:.2f} s)"
            + ("; process left running" if snap.leave_running else "; process stopped")
            + (f"; pushing (operation {snap.push_operation_id})" if snap.push_operation_id else "")))

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot")
@click.option("--wait-for-exit", type=click.IntRange(0, 3600), default=0, help="Seconds to wait for exiting holders of the snapshot's pids.")
@click.option("--gpu-map", "gpu_map", multiple=True, metavar="OLD_UUID=NEW_UUID",
              help="Restore the snapshot's GPU OLD_UUID onto this host's NEW_UUID (repeatable).")
@click.option("--post-hook", default="", metavar="COMMAND",
              help="Command the daemon runs once the tree is back (its failure kills the tree).")
@click.option("--hook-timeout", type=click.IntRange(0, 3600), default=0, help="Seconds for the hook (default 60).")
@click.option("--cgroup", "cgroup_path", default="", metavar="PATH",
              help="Place the whole tree in this cgroup v2 group, relative to the daemon's cgroup root.")
@click.option("--create-cgroup", is_flag=True, help="Create the --cgroup group (and missing parents).")
@click.option("--memory-max", default=None, callback=_size, metavar="SIZE",
              help="memory.max of the group, e.g. 16G; refused up front when the snapshot does not fit.")
@click.option("--cpu-max", default="", metavar="'QUOTA PERIOD'", help="cpu.max of the group, e.g. '200000 100000'.")
@click.option("--pids-max", type=click.IntRange(0), default=0, help="pids.max of the group.")
@click.option("--cpuset-cpus", default="", metavar="LIST", help="cpuset.cpus of the group, e.g. 0-7.")
@click.option("--cpuset-mems", default="", metavar="LIST", help="cpuset.mems of the group, e.g. 0.")
@click.option("--log-name", default="", metavar="NAME",
              help="File in the daemon's restore log directory for the tree's stdout/stderr pipes whose reader "
                   "is gone (default: SNAPSHOT_ID.log).")
@_json_option
@click.pass_context
def restore(ctx: click.Context, snapshot: str, wait_for_exit: int, gpu_map: tuple[str, ...], post_hook: str,
            hook_timeout: int, cgroup_path: str, create_cgroup: bool, memory_max: int, cpu_max: str, pids_max: int,
            cpuset_cpus: str, cpuset_mems: str, log_name: str, as_json: bool) -> None:
    """Restore SNAPSHOT (an id, or a name: its newest snapshot)."""
    mapping = _pairs(gpu_map, "--gpu-map")
    limits = memory_max or cpu_max or pids_max or cpuset_cpus or cpuset_mems or create_cgroup
    if limits and not cgroup_path:
        raise click.UsageError("--create-cgroup and the limit options need --cgroup")
    cgroup = CgroupSpec(path=cgroup_path, create=create_cgroup, memory_max_bytes=memory_max, cpu_max=cpu_max,
                        pids_max=pids_max, cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems) if cgroup_path else None

    def action(c: Ctx) -> None:
        bar = ProgressLine()
        with c.client() as client:
            interrupts = Interrupts(client, bar.done)
            res = client.restore(snapshot, wait_for_exit_seconds=wait_for_exit, gpu_uuid_map=mapping,
                                 post_restore_hook=shlex.split(post_hook), hook_timeout_seconds=hook_timeout,
                                 cgroup=cgroup, log_name=log_name, on_progress=bar, on_interrupt=interrupts)
        bar.done()
        interrupts.completed()
        c.emit(res, lambda: click.echo(
            f"restored {res.snapshot_id} as pid {res.root_pid} (pids {list(res.pids)}) in {res.duration_seconds:.2f} s"
            + (f", cgroup {res.cgroup}" if res.cgroup else "") + (f", output to {res.log_path}" if res.log_path else "")))

    _run(ctx, as_json, action)


@cli.command("list")
@click.option("--name", default="", help="Only snapshots of this name.")
@click.option("--remote", is_flag=True, help="List the remote tier's snapshots instead.")
@_json_option
@click.pass_context
def list_cmd(ctx: click.Context, name: str, remote: bool, as_json: bool) -> None:
    """List complete snapshots, oldest first."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            resp = client.list(name, remote)

        def human() -> None:
            click.echo(f"{'ID':<30} {'NAME':<20} {'ROOT PID':>8} {'RAW':>10} {'STORED':>10} {'NEW':>10}  CREATED")
            for s in resp.snapshots:
                created = s.created.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                marks = ((" [pinned]" if s.pinned else "") + (" [hot]" if s.hot else "")
                         + (" [damaged]" if s.damaged_chunks else ""))
                click.echo(f"{s.id:<30} {(s.name or '-') + marks:<20} {s.root_pid:>8} "
                           f"{human_bytes(s.raw_bytes):>10} {human_bytes(s.stored_bytes):>10} "
                           f"{human_bytes(s.new_bytes):>10}  {created}")
            dedupe = resp.store_stored_bytes / resp.store_disk_bytes if resp.store_disk_bytes else 1.0
            click.echo(f"{len(resp.snapshots)} snapshot(s): {human_bytes(resp.store_raw_bytes)} raw, "
                       f"{human_bytes(resp.store_stored_bytes)} compressed, {human_bytes(resp.store_disk_bytes)} "
                       f"on disk (dedupe ratio {dedupe:.2f})")

        c.emit(resp, (lambda: cmd_remote.print_remote_list(resp)) if remote else human)

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot")
@_json_option
@click.pass_context
def inspect(ctx: click.Context, snapshot: str, as_json: bool) -> None:
    """Show everything recorded about SNAPSHOT."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            s = client.get(snapshot)

        def human() -> None:
            click.echo(f"id:          {s.id}\nname:        {s.name or '-'}\ncreated:     {s.created.ToJsonString()}")
            click.echo(f"host:        {s.hostname} (kernel {s.kernel}, criu {s.criu_version})")
            click.echo(f"size:        {human_bytes(s.raw_bytes)} raw, {human_bytes(s.stored_bytes)} compressed, "
                       f"{human_bytes(s.new_bytes)} new to the store" + (", pinned" if s.pinned else ""))
            click.echo(f"checkpoint:  dumped after {s.checkpoint_seconds:.2f} s, leave_running={s.leave_running}")
            if s.HasField("source_cgroup"):
                limits = " ".join(f"{k}={v}" for k, v in sorted(s.source_cgroup.limits.items()))
                click.echo(f"cgroup:      {s.source_cgroup.path}" + (f" ({limits})" if limits else ""))
            for k, v in sorted(s.labels.items()):
                click.echo(f"label:       {k}={v}")
            click.echo("processes:")
            for p in s.processes:
                click.echo(f"  {p.pid:>7} ppid {p.ppid:<7} {p.threads:>3} thr {human_bytes(p.rss_bytes):>10}  "
                           f"{' '.join(p.cmdline) or p.name}")
            click.echo(f"images:      {len(s.files)} files")
            if s.damaged_chunks:
                click.echo(f"damaged:     {len(s.damaged_chunks)} chunk(s) in quarantine, cannot restore: "
                           f"{' '.join(s.damaged_chunks)}; {_REPAIR}")

        c.emit(s, human)

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot")
@_json_option
@click.pass_context
def rm(ctx: click.Context, snapshot: str, as_json: bool) -> None:
    """Delete SNAPSHOT (an id, or a name: its newest snapshot)."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            resp = client.delete(snapshot)
        c.emit(resp, lambda: click.echo(f"deleted {resp.id}, freed {human_bytes(resp.freed_bytes)}"))

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot")
@_json_option
@click.pass_context
def pin(ctx: click.Context, snapshot: str, as_json: bool) -> None:
    """Pin SNAPSHOT: gc and rm leave it alone."""
    _pin(ctx, snapshot, True, as_json)


@cli.command()
@click.argument("snapshot")
@_json_option
@click.pass_context
def unpin(ctx: click.Context, snapshot: str, as_json: bool) -> None:
    """Unpin SNAPSHOT."""
    _pin(ctx, snapshot, False, as_json)


def _pin(ctx: click.Context, snapshot: str, pinned: bool, as_json: bool) -> None:
    def action(c: Ctx) -> None:
        with c.client() as client:
            s = client.pin(snapshot, pinned)
        c.emit(s, lambda: click.echo(f"{s.id} {'pinned' if s.pinned else 'unpinned'}"))

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot")
@click.option("--drop", is_flag=True, help="Free the RAM copies instead.")
@_json_option
@click.pass_context
def prefetch(ctx: click.Context, snapshot: str, drop: bool, as_json: bool) -> None:
    """Hold SNAPSHOT's chunks decompressed in RAM so its restores skip disk and decompression."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.prefetch(snapshot, drop)
        verb = "dropped" if drop else "prefetched"
        c.emit(r, lambda: click.echo(f"{verb} {r.snapshot_id}: {human_bytes(r.bytes)} in {r.seconds:.2f} s; "
                                     f"hot tier holds {human_bytes(r.hot_bytes)}"))

    _run(ctx, as_json, action)


@cli.command()
@click.option("--keep-last", type=click.IntRange(0), default=0,
              help="Keep the newest N snapshots of each name, expire older ones (pinned/unnamed are kept).")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--remote", is_flag=True, help="The remote tier's unreferenced chunks instead (fails while a push runs).")
@_json_option
@click.pass_context
def gc(ctx: click.Context, keep_last: int, dry_run: bool, remote: bool, as_json: bool) -> None:
    """Reclaim space: expire old snapshots (--keep-last) and unreferenced chunks."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.gc(keep_last=keep_last, dry_run=dry_run, remote=remote)
        verb = "would remove" if r.dry_run else "removed"
        c.emit(r, lambda: cmd_remote.print_remote_gc(r) if remote else click.echo(
            f"{verb} {len(r.expired_snapshots)} snapshot(s) {list(r.expired_snapshots) or ''} and "
            f"{r.chunks} chunk(s), {human_bytes(r.bytes)}"))

    _run(ctx, as_json, action)


@cli.command()
@click.argument("snapshot", required=False, default="")
@_json_option
@click.pass_context
def fsck(ctx: click.Context, snapshot: str, as_json: bool) -> None:
    """Verify every chunk of SNAPSHOT (default: the whole store). Exit 24 on damage."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.fsck(snapshot)

        def human() -> None:
            for d in r.damage:
                click.echo(f"DAMAGED snapshot {d.snapshot_id} {d.file}@{d.offset} chunk {d.chunk}: {d.problem}")
            click.echo(f"{r.snapshots} snapshot(s), {r.chunks_checked} chunk(s), {human_bytes(r.bytes_checked)} "
                       f"verified; {len(r.damage)} damaged reference(s); {r.orphan_chunks} orphan chunk(s) "
                       "(`snapd gc` reclaims them)")

        c.emit(r, human)
        if r.damage:
            damaged = sorted({d.snapshot_id for d in r.damage})
            _fail(c, "ChunkCorrupt", f"{len(damaged)} damaged snapshot(s) {' '.join(damaged)}; their bad chunks "
                  f"are in quarantine: {_REPAIR}", _EXIT_DATA_LOSS)

    _run(ctx, as_json, action)


@cli.command()
@_json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Diagnose the daemon and host: CRIU, kernel, cgroups, disk, GPU. Exit 1 if a check fails."""

    def action(c: Ctx) -> None:
        with c.client() as client:
            st = client.status()

        def human() -> None:
            click.echo(f"snapd {st.version} (pid {st.pid}, up {st.uptime_seconds:.0f} s), state dir {st.state_dir}, "
                       f"{st.snapshots} snapshot(s), {st.operations_in_flight} operation(s) running")
            for chk in st.checks:
                click.echo(f"  [{'ok' if chk.ok else 'FAIL'}] {chk.name:<16} {chk.detail}")

        c.emit(st, human)
        if not all(chk.ok for chk in st.checks):
            sys.exit(1)

    _run(ctx, as_json, action)


def main() -> None:
    cli()


from snapd_client import cmd_remote  # noqa: E402 (registers push and pull on cli; needs it defined)
