"""The `snapd` command line for callers of the daemon: every command here talks to it over gRPC.

This package imports grpcio and protobuf (and click), never the daemon; the daemon's
`snapd` entry point adds `serve` and `exit-codes` to this group. The group and what commands
share live in base.py; checkpoint, restore and status here; the store's commands in
cmd_store.py, instances (ps, stop, logs, events) in cmd_instances.py, running operations (ops,
cancel) in cmd_ops.py, export/import in cmd_transfer.py, the remote tier in cmd_remote.py, shell
completion in cmd_completion.py.

Exit codes: 0 success, 2 usage error, 3 daemon unreachable, and one code per
daemon error class (listed by `snapd exit-codes` and in docs/scheduler.md).
Ctrl-C during `checkpoint` or `restore`: see interrupts.py.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from snapd_client import cmd_completion, cmd_instances, cmd_ops, cmd_remote, cmd_store, cmd_transfer
from snapd_client import replicas as replicas_cmd
from snapd_client.base import Ctx, cli, common_options, run
from snapd_client.client import CgroupSpec, TcpRestore
from snapd_client.interrupts import Interrupts
from snapd_client.output import ProgressLine, human_bytes

# the command modules register their commands on `cli` when imported
COMMAND_MODULES = (cmd_completion, cmd_instances, cmd_ops, cmd_remote, cmd_store, cmd_transfer)
MAX_PID = 4194304  # the kernel's PID_MAX_LIMIT; the daemon refuses larger pids too (docs/limits.md)


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


def _verify_body(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The answer check's body: JSON given inline ({...} or [...]), else the file it names."""
    if not value or value.lstrip()[:1] in ("{", "["):
        text = value
    else:
        try:
            text = Path(value).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{value!r} is neither JSON nor a readable text file ({exc})", param=param) from None
    try:
        json.loads(text or "null")
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param=param) from None
    return text


SECONDS = click.FloatRange(0.001, 3600)


@cli.command()
@click.argument("pid", type=click.IntRange(1, MAX_PID))
@click.option("--name", default="", help="Snapshot name (restore accepts it instead of the id).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label to store (repeatable).")
@click.option("--leave-running", is_flag=True,
              help="Keep the process running after the checkpoint (default: it is stopped once the snapshot "
                   "is durable).")
@click.option("--pre-hook", default="", metavar="COMMAND",
              help="Command the daemon runs before freezing anything (shell-style words, no shell).")
@click.option("--hook-timeout", type=click.IntRange(0, 3600), default=60, show_default=True,
              help="Seconds for the hook.")
@click.option("--cuda-lock-timeout-ms", type=click.IntRange(0, 600_000), default=30000, show_default=True,
              help="How long CUDA may wait for in-flight GPU work.")
@click.option("--keep-hot", is_flag=True, help="Also keep the snapshot decompressed in RAM for a fast next restore.")
@click.option("--tcp-established", is_flag=True,
              help="Dump established TCP connections (default: a tree holding one is refused); restore closes "
                   "them unless --tcp reestablish.")
@click.option("--ext-unix-sk", is_flag=True,
              help="Dump unix sockets connected to processes outside the tree (default: refused); a datagram "
                   "socket to a named peer such as /dev/log is connected to it again at restore.")
@click.option("--link-remap", is_flag=True,
              help="Dump open files unlinked while another name still links them (default: refused): CRIU links "
                   "each as link_remap.N in its directory until the snapshot is deleted.")
@click.option("--push/--no-push", default=None, help="Upload it to the remote tier in the background once durable "
              "[default: the daemon's push_after_checkpoint].")
@click.option("--ready-http", default="", metavar="URL",
              help="Readiness probe restores wait for: GET URL, as the tree sees it (its own network namespace).")
@click.option("--ready-status", type=click.IntRange(100, 599), default=200, show_default=True,
              help="The status --ready-http passes on.")
@click.option("--ready-cmd", default="", metavar="COMMAND",
              help="Readiness probe instead: `sh -c COMMAND` in the tree's network namespace, passes on exit 0.")
@click.option("--ready-timeout", type=SECONDS, default=60, show_default=True,
              help="Seconds a restore waits for the probe to pass.")
@click.option("--verify-http", default="", metavar="URL",
              help="Answer check: POST --verify-body to URL now (before the pre-hook) and record the answer's "
                   "status and digest; `restore --verify` compares.")
@click.option("--verify-body", default="", callback=_verify_body, metavar="FILE|JSON", help="Body of --verify-http.")
@click.option("--verify-field", default="", metavar="KEY",
              help="Digest only this top-level key of the JSON answer (one that also carries timings).")
@click.option("--verify-timeout", type=SECONDS, default=30, show_default=True,
              help="Seconds the --verify-http request may take.")
@common_options
@click.pass_context
def checkpoint(ctx: click.Context, pid: int, name: str, labels: tuple[str, ...], leave_running: bool,
               pre_hook: str, hook_timeout: int, cuda_lock_timeout_ms: int, keep_hot: bool,
               tcp_established: bool, ext_unix_sk: bool, link_remap: bool, push: bool | None,
               ready_http: str, ready_status: int, ready_cmd: str, ready_timeout: float,
               verify_http: str, verify_body: str, verify_field: str, verify_timeout: float) -> None:
    """Checkpoint process tree PID (with its GPU state) into a new snapshot.

    The tree is frozen while CRIU dumps it and, unless --leave-running, STOPPED for good once
    the snapshot is durable (like `criu dump`): restore it to bring it back. Open files, file
    locks, pipes and unix sockets inside the tree are kept; stdio pipes and sockets to the
    outside are redirected at restore (docs/scheduler.md).

    \b
    Examples:
      snapd checkpoint 4242 --name llama-8b --label model=llama-3.1-8b
      snapd checkpoint 4242 --leave-running --keep-hot
      snapd checkpoint 4242 --tcp-established --pre-hook 'curl -X POST localhost:8000/sleep'
      snapd checkpoint 4242 --ready-http http://127.0.0.1:8000/health \\
        --verify-http http://127.0.0.1:8000/generate --verify-body '{"tokens": [1, 2, 3]}'
    """
    parsed = _pairs(labels, "--label")
    if ready_http and ready_cmd:
        raise click.UsageError("give --ready-http or --ready-cmd, not both")
    if bool(verify_http) != bool(verify_body) or (verify_field and not verify_http):
        raise click.UsageError("--verify-http and --verify-body go together (--verify-field with them)")

    def action(c: Ctx) -> None:
        with c.client() as client, ProgressLine() as bar:
            interrupts = Interrupts(client, bar.stop)
            snap = client.checkpoint(pid, name=name, labels=parsed, leave_running=leave_running,
                                     pre_checkpoint_hook=shlex.split(pre_hook), hook_timeout_seconds=hook_timeout,
                                     cuda_lock_timeout_ms=cuda_lock_timeout_ms, keep_hot=keep_hot,
                                     tcp_established=tcp_established, ext_unix_sk=ext_unix_sk,
                                     link_remap=link_remap, push=push, ready_http=ready_http,
                                     ready_status=ready_status if ready_http else 0, ready_cmd=ready_cmd,
                                     ready_timeout_ms=round(ready_timeout * 1000), verify_http=verify_http,
                                     verify_body=verify_body, verify_field=verify_field,
                                     verify_timeout_ms=round(verify_timeout * 1000), on_progress=bar, on_interrupt=interrupts)
        interrupts.completed()
        c.emit(snap, lambda: click.echo(
            f"snapshot {snap.id}{f' ({snap.name})' if snap.name else ''}: {len(snap.processes)} process(es), "
            f"{human_bytes(snap.raw_bytes)} in {snap.duration_seconds:.2f} s (dumped after "
            f"{snap.checkpoint_seconds:.2f} s), operation {snap.operation_id}"
            + ("; process left running" if snap.leave_running else "; process stopped")
            + (f"; pushing (operation {snap.push_operation_id})" if snap.push_operation_id else "")
            + (f"; ready when {snap.ready_probe}" if snap.ready_probe else "")
            + (f"; answer check {snap.answer_check}" if snap.answer_check else "")))

    run(ctx, action)


@cli.command()
@click.argument("snapshot")
@click.option("--wait-for-exit", type=click.IntRange(0, 3600), default=10, show_default=True,
              help="Seconds to wait for exiting holders of the snapshot's pids (0: no wait, refuse at once).")
@click.option("--gpu-map", "gpu_map", multiple=True, metavar="OLD_UUID=NEW_UUID",
              help="Restore the snapshot's GPU OLD_UUID onto this host's NEW_UUID (repeatable).")
@click.option("--gpu-policy", type=click.Choice(["shared", "exclusive"]), default=None,
              help="Where the snapshot's GPUs go unless --gpu-map names them: a GPU of the model with room for "
              "what the snapshot held there (shared), or an idle one (exclusive) [default: the daemon's gpu_policy].")
@click.option("--post-hook", default="", metavar="COMMAND",
              help="Command the daemon runs once the tree is back (its failure kills the tree).")
@click.option("--hook-timeout", type=click.IntRange(0, 3600), default=60, show_default=True,
              help="Seconds for the hook.")
@click.option("--cgroup", "cgroup_path", default="", metavar="PATH",
              help="Place the whole tree in this cgroup v2 group, relative to the daemon's cgroup root.")
@click.option("--create-cgroup", is_flag=True, help="Create the --cgroup group (and missing parents).")
@click.option("--memory-max", default=None, callback=_size, metavar="SIZE",
              help="memory.max of the group, e.g. 16G; refused up front when the snapshot does not fit.")
@click.option("--cpu-max", default="", metavar="'QUOTA PERIOD'", help="cpu.max of the group, e.g. '200000 100000'.")
@click.option("--pids-max", type=click.IntRange(0, MAX_PID), default=0, help="pids.max of the group.")
@click.option("--cpuset-cpus", default="", metavar="LIST", help="cpuset.cpus of the group, e.g. 0-7.")
@click.option("--cpuset-mems", default="", metavar="LIST", help="cpuset.mems of the group, e.g. 0.")
@click.option("--log-name", default="", metavar="NAME",
              help="File in the daemon's restore log directory for the tree's stdout/stderr pipes whose reader "
                   "is gone [default: SNAPSHOT_ID.log].")
@click.option("--tcp", type=click.Choice(["close", "reestablish"]), default="close", show_default=True,
              help="TCP connections of a snapshot taken with --tcp-established: close them (clients see a reset "
                   "and reconnect) or re-establish them (only while the peers still hold them).")
@click.option("--replicas", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Restore K copies at once (snapshots of trees started with `snapd run`).")
@click.option("--publish-host", default="", help="Host IP a copy with its own network namespace publishes ports on.")
@click.option("--into", "into_pid", type=click.IntRange(1, MAX_PID), default=None, metavar="PID",
              help="Restore into the container or pod sandbox of PID (host pid of any of its processes): its "
              "network, UTS and IPC namespaces, a group below its cgroup (docs/pods.md).")
@click.option("--wait-ready/--no-wait-ready", default=None,
              help="End once the snapshot's readiness probe passes (a timeout kills the tree), or return at running "
                   "and let the daemon probe [default: wait when it has a probe].")
@click.option("--verify", is_flag=True,
              help="Once ready, send the snapshot's answer check again: a different answer kills the tree.")
@common_options
@click.pass_context
def restore(ctx: click.Context, snapshot: str, wait_for_exit: int, gpu_map: tuple[str, ...],
            gpu_policy: str | None, post_hook: str,
            hook_timeout: int, cgroup_path: str, create_cgroup: bool, memory_max: int, cpu_max: str, pids_max: int,
            cpuset_cpus: str, cpuset_mems: str, log_name: str, tcp: str, replicas: int, publish_host: str,
            into_pid: int | None, wait_ready: bool | None, verify: bool) -> None:
    """Restore SNAPSHOT (an id, a unique id prefix, or a name: its newest snapshot).

    The tree comes back with its original pids, so the original must be gone;
    a tree started with `snapd run` gets fresh namespaces instead, so any number
    of copies run at once (--replicas K).

    \b
    Examples:
      snapd restore llama-8b
      snapd restore 20261128T0912 --log-name llama.log
      snapd restore llama-8b --cgroup inference/llama --create-cgroup --memory-max 64G --cpu-max '800000 100000'
      snapd restore llama-8b --replicas 4
      snapd restore llama-8b --gpu-policy exclusive
      snapd restore llama-8b --into "$(podman inspect -f '{{.State.Pid}}' POD-infra)"
      snapd restore llama-8b --verify
    """
    mapping = _pairs(gpu_map, "--gpu-map")
    limits = memory_max or cpu_max or pids_max or cpuset_cpus or cpuset_mems or create_cgroup
    if limits and not cgroup_path:
        raise click.UsageError("--create-cgroup and the limit options need --cgroup")
    cgroup = CgroupSpec(path=cgroup_path, create=create_cgroup, memory_max_bytes=memory_max, cpu_max=cpu_max,
                        pids_max=pids_max, cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems) if cgroup_path else None
    tcp_mode = TcpRestore.Value("TCP_RESTORE_REESTABLISH" if tcp == "reestablish" else "TCP_RESTORE_CLOSE")
    options = dict(wait_for_exit_seconds=wait_for_exit, gpu_uuid_map=mapping, gpu_policy=gpu_policy or "",
                   post_restore_hook=shlex.split(post_hook),
                   hook_timeout_seconds=hook_timeout, cgroup=cgroup, log_name=log_name, tcp=tcp_mode,
                   publish_host=publish_host, into_pid=into_pid or 0, wait_ready=wait_ready, verify=verify)

    def action(c: Ctx) -> None:
        if replicas > 1:
            with c.client() as client:
                outcomes = client.restore_replicas(snapshot, replicas, **options)
            return replicas_cmd.report(outcomes, c.as_json)
        with c.client() as client, ProgressLine() as bar:
            interrupts = Interrupts(client, bar.stop)
            res = client.restore(snapshot, **options, on_progress=bar, on_interrupt=interrupts)  # type: ignore[arg-type]
        interrupts.completed()
        c.emit(res, lambda: click.echo(
            f"restored {res.snapshot_id} as pid {res.root_pid} (pids {list(res.pids)}) in {res.duration_seconds:.2f} s, "
            f"instance {res.instance_id}"
            + (f", ready in {res.ready_seconds:.2f} s" if res.ready_seconds else "")
            + (f", verified answer {res.verified_digest}" if res.verified_digest else "")
            + (f", cgroup {res.cgroup}" if res.cgroup else "") + (f", output to {res.log_path}" if res.log_path else "")
            + "".join(f", port {p.port} at {p.address}" for p in res.published) + f", operation {res.operation_id}"))

    run(ctx, action)


@cli.command()
@common_options
@click.pass_context
def status(ctx: click.Context) -> None:
    """Diagnose the daemon and host: CRIU, kernel, cgroups, disk, GPU.

    Each check is [ok], [warn] (works, with a gap to know of: a restore limit that cannot be
    set, no GPU driver on a host not marked gpu_required) or [FAIL]. Exit 1 only if one fails.

    \b
    Examples:
      snapd status
      snapd status --json | jq '.checks[] | select(.ok == false)'
      snapd status --json | jq '.checks[] | select(.warning)'
    """

    def action(c: Ctx) -> None:
        with c.client() as client:
            st = client.status()

        def human() -> None:
            click.echo(f"snapd {st.version} (pid {st.pid}, up {st.uptime_seconds:.0f} s), state dir {st.state_dir}, "
                       f"{st.snapshots} snapshot(s), {st.operations_in_flight} operation(s) running")
            for chk in st.checks:
                mark = "FAIL" if not chk.ok else "warn" if chk.warning else "ok"
                click.echo(f"  [{mark}]{' ' * (4 - len(mark))} {chk.name:<16} {chk.detail}")
            failed = sum(not chk.ok for chk in st.checks)
            warned = sum(chk.ok and chk.warning for chk in st.checks)
            click.echo(f"{failed} failure(s), {warned} warning(s)")
            if st.log_lines_dropped:
                click.echo(f"  {st.log_lines_dropped} daemon log line(s) could not be written (its disk full? "
                           "stderr closed?) and were dropped")

        c.emit(st, human)
        if not all(chk.ok for chk in st.checks):
            sys.exit(1)

    run(ctx, action)


def main() -> None:
    cli()


