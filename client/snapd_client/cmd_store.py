"""`snapd list`, `inspect`, `rm`, `pin`, `unpin`, `prefetch`, `gc`, `fsck`: the snapshot store."""

from __future__ import annotations

import click

from snapd.v1 import snapd_pb2 as pb
from snapd_client import cmd_remote
from snapd_client import replicas as replicas_cmd
from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.output import check_template, human_bytes, render

# ChunkCorrupt's exit code (DATA_LOSS): `snapd fsck` found damage
EXIT_DATA_LOSS = 24
# ManifestDamaged's: `snapd fsck` found a manifest that failed its seal
EXIT_MANIFEST_DAMAGED = 32
MAX_KEEP_LAST = 1_000_000  # the daemon's bound (docs/limits.md)
_REPAIR = ("checkpoint the same source again to store the damaged chunks anew (that repairs every snapshot "
           "using them), or `snapd rm` the damaged snapshot(s)")


def flags(s: pb.Snapshot) -> str:
    """The FLAGS column: pinned, hot, damaged, tcp (comma-separated; "-" for none)."""
    marks = [m for m, on in (("pinned", s.pinned), ("hot", s.hot), ("damaged", bool(s.damaged_chunks)),
                             ("tcp", s.tcp_established), ("ext-unix", s.ext_unix_sk),
                             ("link-remap", s.link_remap)) if on]
    return ",".join(marks) or "-"


def _labels(_ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    wanted = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param=param)
        wanted[key] = val
    return wanted


@cli.command("list")
@click.option("--name", default="", help="Only snapshots of this name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", callback=_labels,
              help="Only snapshots with this label (repeatable: all must match).")
@click.option("--remote", is_flag=True, help="List the remote tier's snapshots instead.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one a line (no header, no summary).")
@click.option("--format", "template", default="", metavar="TEMPLATE",
              help="Print each snapshot as TEMPLATE: {{.Field}} is a field of Snapshot in the .proto "
                   "(Id, Name, RawBytes, Labels, Created, ...), \\t a tab.")
@common_options
@click.pass_context
def list_cmd(ctx: click.Context, name: str, labels: dict[str, str], remote: bool, quiet: bool,
             template: str) -> None:
    """List complete snapshots, oldest first.

    FLAGS: pinned (gc and rm leave it), hot (held in RAM), damaged (a chunk is in quarantine, or
    the manifest itself: it failed its seal and is in quarantine), tcp (taken with --tcp-established).

    \b
    Examples:
      snapd list
      snapd list --name llama-8b --json
      snapd list --label model=llama-3.1-8b -q
      snapd list --format '{{.Id}}\\t{{.Name}}\\t{{.RawBytes}}'
      snapd rm $(snapd list --name old-model -q | head -n 1)
      snapd list --remote
    """
    if quiet and template:
        raise click.UsageError("-q and --format go one at a time")
    check_template(template, pb.Snapshot.DESCRIPTOR)

    def action(c: Ctx) -> None:
        with c.client() as client:
            resp = client.list(name, remote)
        if labels:
            kept = [s for s in resp.snapshots if all(s.labels.get(k) == v for k, v in labels.items())]
            del resp.snapshots[:]
            resp.snapshots.extend(kept)
        if (quiet or template) and not c.as_json:
            for s in resp.snapshots:
                click.echo(s.id if quiet else render(template, s))
            return

        def human() -> None:
            click.echo(f"{'ID':<29} {'NAME':<20} {'FLAGS':<12} {'ROOT PID':>8} {'RAW':>10} {'STORED':>10} "
                       f"{'NEW':>10}  CREATED")
            for s in resp.snapshots:
                created = s.created.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                click.echo(f"{s.id:<29} {s.name or '-':<20} {flags(s):<12} {s.root_pid:>8} "
                           f"{human_bytes(s.raw_bytes):>10} {human_bytes(s.stored_bytes):>10} "
                           f"{human_bytes(s.new_bytes):>10}  {created}")
            for d in resp.damaged_manifests:
                click.echo(f"{d.snapshot_id:<29} {'-':<20} {'damaged':<12} {'-':>8} {'-':>10} {'-':>10} {'-':>10}  "
                           "- (manifest in quarantine)")
            for d in resp.damaged_manifests:
                click.echo(f"damaged manifest of {d.snapshot_id}, in quarantine at {d.moved_to}: {d.problem}")
            sums = (f"{len(resp.snapshots)} snapshot(s){f' named {name}' if name else ''}: "
                    f"{human_bytes(resp.store_raw_bytes)} raw, {human_bytes(resp.store_stored_bytes)} compressed")
            if name:  # the store's disk use is not theirs alone: their own new bytes say what they added
                click.echo(f"{sums}, {human_bytes(sum(s.new_bytes for s in resp.snapshots))} first stored by them")
            else:
                dedupe = resp.store_stored_bytes / resp.store_disk_bytes if resp.store_disk_bytes else 1.0
                click.echo(f"{sums}, {human_bytes(resp.store_disk_bytes)} on disk (deduplication saves "
                           f"{dedupe:.2f}x)")

        c.emit(resp, (lambda: cmd_remote.print_remote_list(resp)) if remote else human)

    run(ctx, action)


@cli.command()
@click.argument("snapshot")
@common_options
@click.pass_context
def inspect(ctx: click.Context, snapshot: str) -> None:
    """Show everything recorded about SNAPSHOT (id, unique id prefix, or name).

    \b
    Examples:
      snapd inspect llama-8b
      snapd inspect 20261128T0912 --json
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            s = client.get(snapshot)

        def human() -> None:
            click.echo(f"id:          {s.id}\nname:        {s.name or '-'}\ncreated:     {s.created.ToJsonString()}")
            click.echo(f"host:        {s.hostname} (kernel {s.kernel}, criu {s.criu_version})")
            click.echo(f"size:        {human_bytes(s.raw_bytes)} raw, {human_bytes(s.stored_bytes)} compressed, "
                       f"{human_bytes(s.new_bytes)} new to the store" + (", pinned" if s.pinned else ""))
            click.echo(f"checkpoint:  dumped after {s.checkpoint_seconds:.2f} s, leave_running={s.leave_running}, "
                       f"tcp_established={s.tcp_established}, link_remap={s.link_remap}"
                       + replicas_cmd.namespaces_note(s))
            for path in s.link_remap_files:
                click.echo(f"link remap:  {path} (CRIU's link to an unlinked open file; removed with the snapshot)")
            if s.HasField("source_cgroup"):
                limits = " ".join(f"{k}={v}" for k, v in sorted(s.source_cgroup.limits.items()))
                click.echo(f"cgroup:      {s.source_cgroup.path}" + (f" ({limits})" if limits else ""))
            for k, v in sorted(s.labels.items()):
                click.echo(f"label:       {k}={v}")
            if s.ready_probe:
                click.echo(f"ready when:  {s.ready_probe}")
            if s.answer_check:
                click.echo(f"verify:      {s.answer_check}")
            click.echo("processes:")
            for p in s.processes:
                click.echo(f"  {p.pid:>7} ppid {p.ppid:<7} {p.threads:>3} thr {human_bytes(p.rss_bytes):>10}  "
                           f"{' '.join(p.cmdline) or p.name}")
            click.echo(f"images:      {len(s.files)} files")
            if s.damaged_chunks:
                click.echo(f"damaged:     {len(s.damaged_chunks)} chunk(s) in quarantine, cannot restore: "
                           f"{' '.join(s.damaged_chunks)}; {_REPAIR}")

        c.emit(s, human)

    run(ctx, action)


@cli.command()
@click.argument("snapshot")
@click.option("--force", is_flag=True, help="Delete it although instances of it still run (they keep running).")
@common_options
@click.pass_context
def rm(ctx: click.Context, snapshot: str, force: bool) -> None:
    """Delete SNAPSHOT (an id, a unique id prefix, or a name: its newest snapshot).

    Refused while instances restored from it run (`snapd ps`), unless --force.

    \b
    Examples:
      snapd rm 20261128T0912
      snapd rm llama-8b --force
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            resp = client.delete(snapshot, force)
        c.emit(resp, lambda: click.echo(f"deleted {resp.id}, freed {human_bytes(resp.freed_bytes)}"))

    run(ctx, action)


@cli.command()
@click.argument("snapshot")
@common_options
@click.pass_context
def pin(ctx: click.Context, snapshot: str) -> None:
    """Pin SNAPSHOT: gc and rm leave it alone.

    \b
    Examples:
      snapd pin llama-8b
    """
    _pin(ctx, snapshot, True)


@cli.command()
@click.argument("snapshot")
@common_options
@click.pass_context
def unpin(ctx: click.Context, snapshot: str) -> None:
    """Unpin SNAPSHOT.

    \b
    Examples:
      snapd unpin llama-8b
    """
    _pin(ctx, snapshot, False)


def _pin(ctx: click.Context, snapshot: str, pinned: bool) -> None:
    def action(c: Ctx) -> None:
        with c.client() as client:
            s = client.pin(snapshot, pinned)
        c.emit(s, lambda: click.echo(f"{s.id} {'pinned' if s.pinned else 'unpinned'}"))

    run(ctx, action)


@cli.command()
@click.argument("snapshot")
@click.option("--drop", is_flag=True, help="Free the RAM copies instead.")
@common_options
@click.pass_context
def prefetch(ctx: click.Context, snapshot: str, drop: bool) -> None:
    """Hold SNAPSHOT's chunks decompressed in RAM so its restores skip disk and decompression.

    The pages of its tree's files that a restore reads (libraries' code and data)
    are read into the page cache too.

    \b
    Examples:
      snapd prefetch llama-8b
      snapd prefetch llama-8b --drop
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.prefetch(snapshot, drop)
        verb = "dropped" if drop else "prefetched"
        c.emit(r, lambda: click.echo(f"{verb} {r.snapshot_id}: {human_bytes(r.bytes)} in {r.seconds:.2f} s; "
                                     f"hot tier holds {human_bytes(r.hot_bytes)}"
                                     + (f"; {human_bytes(r.file_bytes)} of its files read in" if r.file_bytes else "")))

    run(ctx, action)


def _keep_last(_ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} would keep no snapshot of a name; leave --keep-last out to expire none, "
                                 "or remove snapshots with `snapd rm`", param=param)
    if value is not None and value > MAX_KEEP_LAST:
        raise click.BadParameter(f"{value} is above the limit {MAX_KEEP_LAST}", param=param)
    return value


@cli.command()
@click.option("--keep-last", type=int, default=None, metavar="N", callback=_keep_last,
              help="Keep the newest N (>= 1) snapshots of each name and expire older ones (pinned and unnamed "
                   "snapshots are kept) [default: expire none].")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--remote", is_flag=True, help="The remote tier's unreferenced chunks instead (fails while a push runs).")
@common_options
@click.pass_context
def gc(ctx: click.Context, keep_last: int | None, dry_run: bool, remote: bool) -> None:
    """Reclaim space: expire old snapshots (--keep-last) and remove unreferenced chunks.

    Without --keep-last no snapshot is removed, only chunks no snapshot uses. `--keep-last 0`
    is refused: to remove every snapshot of a name use `snapd rm`.

    \b
    Examples:
      snapd gc --dry-run
      snapd gc --keep-last 2
      snapd gc --remote --dry-run
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.gc(keep_last=keep_last or 0, dry_run=dry_run, remote=remote)

        def human() -> None:
            verb = "would remove" if r.dry_run else "removed"
            click.echo(f"{verb} {len(r.expired_snapshots)} snapshot(s) and {r.chunks} chunk(s), "
                       f"{human_bytes(r.bytes)}{' (dry run)' if r.dry_run else ''}")
            for sid in r.expired_snapshots:
                click.echo(f"  {sid}")

        c.emit(r, (lambda: cmd_remote.print_remote_gc(r)) if remote else human)

    run(ctx, action)


@cli.command()
@click.argument("snapshot", required=False, default="")
@common_options
@click.pass_context
def fsck(ctx: click.Context, snapshot: str) -> None:
    """Verify the manifest and every chunk of SNAPSHOT (default: the whole store).

    Exit 0 when everything is whole; 32 (ManifestDamaged) when a manifest failed its seal
    (it is moved to quarantine; with the whole store, also when one is there already);
    else 24 (ChunkCorrupt, data loss) when a chunk was damaged: the bad chunks are moved
    to quarantine and the snapshots using them marked damaged.

    \b
    Examples:
      snapd fsck
      snapd fsck llama-8b --json
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            r = client.fsck(snapshot)

        def human() -> None:
            for m in r.damaged_manifests:
                click.echo(f"DAMAGED manifest of snapshot {m.snapshot_id} ({m.path}, in quarantine at "
                           f"{m.moved_to}): {m.problem}")
            for d in r.damage:
                click.echo(f"DAMAGED snapshot {d.snapshot_id} {d.file}@{d.offset} chunk {d.chunk}: {d.problem}")
            click.echo(f"{r.snapshots} snapshot(s), {r.chunks_checked} chunk(s), {human_bytes(r.bytes_checked)} "
                       f"verified; {len(r.damage)} damaged reference(s); {r.orphan_chunks} orphan chunk(s) "
                       "(`snapd gc` reclaims them)")
            if r.snapshots_gone:
                click.echo(f"{len(r.snapshots_gone)} snapshot(s) deleted while checking, not checked further: "
                           + " ".join(r.snapshots_gone))

        c.emit(r, human)
        if r.damaged_manifests:
            c.fail("ManifestDamaged", f"{len(r.damaged_manifests)} damaged manifest(s) "
                   f"{' '.join(m.snapshot_id for m in r.damaged_manifests)}, in quarantine: those snapshots cannot "
                   "be restored; pull or import an intact copy, or delete the quarantined file",
                   EXIT_MANIFEST_DAMAGED)
        if r.damage:
            damaged = sorted({d.snapshot_id for d in r.damage})
            c.fail("ChunkCorrupt", f"{len(damaged)} damaged snapshot(s) {' '.join(damaged)}; their bad chunks "
                   f"are in quarantine: {_REPAIR}", EXIT_DATA_LOSS)

    run(ctx, action)
