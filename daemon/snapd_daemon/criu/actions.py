"""Dump and restore requests to CRIU, with failures turned into CriuFailed.

A failure message carries CRIU's own error text and the error lines at the
end of CRIU's log, and names the pid.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from snapd_daemon.criu import rpc_pb2, swrk
from snapd_daemon.criu.binary import Criu
from snapd_daemon.criu.notify import Notify
from snapd_daemon.errors import CriuFailed

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
_TAIL_LINES = 12
# what snapd adds to a CRIU error it knows the remedy of
_HINTS = (
    ("Use link-remap option", " (snapd: checkpoint --link-remap)"),
    ("Unable to open dev/ptmx with specified index", " (CRIU makes the tree's own pseudo-terminal anew at its "
     "index, opening at most 32 new ones to reach it: another process holds that /dev/pts entry now, or it lies "
     "32 or more above the lowest free one; retry once it is free)"),
)


def _error_lines(path: Path) -> list[str] | None:
    """The error lines of a CRIU log, CRIU's harmless RLIMIT_NOFILE complaint left
    out; None if there is no log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    return [ln for ln in text if "Error" in ln and "RLIMIT_NOFILE" not in ln] or text


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last error lines of a CRIU log (else its last lines)."""
    found = _error_lines(path)
    return "(no log written)" if found is None else "\n".join(found[-lines:])


def failure_reason(path: Path, errmsg: str) -> str:
    """What went wrong: the first error in CRIU's log after the harmless
    RLIMIT_NOFILE complaint, which CRIU reports as its errmsg; else ``errmsg``."""
    for line in _error_lines(path) or []:
        cause = line.split("): ", 1)[-1].strip()
        if "Error" in line and not cause.endswith("FAILED."):
            return cause + next((hint for known, hint in _HINTS if known in cause), "")
    return errmsg


def _run(
    criu: Criu,
    action: str,
    pid: int,
    opts: rpc_pb2.Opts,
    images: Path,
    work: Path,
    log_name: str,
    notify: Notify | None,
    place: swrk.PlaceHook | None = None,
    extra_fds: tuple[int, ...] = (),
) -> rpc_pb2.Resp:
    with contextlib.ExitStack() as fds:
        images_fd = swrk.open_dir(images)
        fds.callback(os.close, images_fd)
        work_fd = swrk.open_dir(work)
        fds.callback(os.close, work_fd)
        return _call(criu, action, pid, opts, (images_fd, work_fd, *extra_fds), work, log_name, notify, place)


def _call(
    criu: Criu,
    action: str,
    pid: int,
    opts: rpc_pb2.Opts,
    fds: tuple[int, ...],
    work: Path,
    log_name: str,
    notify: Notify | None,
    place: swrk.PlaceHook | None,
) -> rpc_pb2.Resp:
    """``fds``: the images and work directories, then any fd ``opts`` names."""
    try:
        opts.images_dir_fd, opts.work_dir_fd = fds[:2]
        opts.log_file = log_name
        opts.notify_scripts = notify is not None
        req_type = rpc_pb2.DUMP if action == "dump" else rpc_pb2.RESTORE
        return swrk.call(
            criu.path,
            rpc_pb2.Req(type=req_type, opts=opts),
            pass_fds=fds,
            notify=notify,
            stderr_path=work / f"{action}.stderr",
            place=place,
            # snapd drives the GPU side itself: CRIU's cuda plugin would restore and unlock
            # the processes inside CRIU's restore, before snapd has written their memory.
            # The work directory holds only logs, so CRIU finds no plugin in it.
            plugin_dir=work,
        )
    except swrk.HookFailed as exc:
        raise exc.cause from exc
    except (swrk.SwrkError, OSError) as exc:
        raise CriuFailed(
            action=action, pid=pid, reason=failure_reason(work / log_name, str(exc)), log=work / log_name,
            log_tail=log_tail(work / log_name)
        ) from exc


def dump(
    criu: Criu,
    pid: int,
    images: Path,
    work: Path,
    *,
    shell_job: bool,
    log_level: int,
    freeze_timeout: int,
    notify: Notify | None = None,
    external: Sequence[str] = (),
    tcp_established: bool = False,
    ext_unix_sk: bool = False,
    link_remap: bool = False,
    own_mntns: bool = False,
) -> None:
    """Dump the tree rooted at ``pid`` into ``images``. The tree is always left
    running by CRIU; stopping it is the caller's decision, made only once the
    snapshot is durable. ``external``: resources CRIU may dump without their
    other end ("unix[ino]"), to be given back at restore with inherit_fd.
    ``tcp_established``: dump established TCP connections (their sockets are put in
    repair mode while the tree is frozen; CRIU's network lock is nftables, through
    the libnftables it is built with). File locks are always dumped. ``ext_unix_sk``:
    dump unix sockets connected to processes outside the tree (CRIU's
    --ext-unix-sk; see ``restore``). ``link_remap``: an open file whose name is gone but
    that another name still links is linked anew as ``link_remap.N`` in its directory
    (CRIU's --link-remap; CRIU removes those links again when the dump fails). ``own_mntns``: the tree has a mount namespace of its
    own (``snapd run``), which CRIU dumps; its mounts that are copies of mounts CRIU
    sees (all but its /proc, see ``snapd_daemon.host.mountns``) are recorded as external
    (auto_ext_mnt; ext_sharing and ext_masters let shared and slave copies count too)."""
    opts = rpc_pb2.Opts(
        images_dir_fd=-1,
        pid=pid,
        leave_running=True,
        shell_job=shell_job,
        file_locks=True,
        log_level=log_level,
        timeout=freeze_timeout,
        external=list(external),
        tcp_established=tcp_established,
        ext_unix_sk=ext_unix_sk,
        link_remap=link_remap,
        # without tcp_established, established TCP connections are refused, not dumped: no
        # firewall lock is needed (the default lock needs iptables binaries many hosts lack)
        network_lock=rpc_pb2.SKIP,
    )
    if tcp_established:
        opts.network_lock = rpc_pb2.NFTABLES
    if own_mntns:
        opts.auto_ext_mnt = opts.ext_sharing = opts.ext_masters = True
    _run(criu, "dump", pid, opts, images, work, DUMP_LOG, notify)


def restore(
    criu: Criu,
    root_pid: int,
    images: Path,
    work: Path,
    *,
    shell_job: bool,
    log_level: int,
    notify: Notify | None = None,
    place: swrk.PlaceHook | None = None,
    manage_cgroups: bool = True,
    inherit: Sequence[tuple[str, int]] = (),
    tcp: str = "",
    ext_unix_sk: bool = False,
    own_mntns: bool = False,
    join: Sequence[tuple[str, str]] = (),
    lazy_pages: bool = False,
) -> int:
    """Restore the images in ``images`` (read-only); returns the restored root pid.
    Every restored task is left stopped (``leave_stopped``): the caller resumes
    them once it has finished the tree, or kills it.

    The restored tree is detached: it is reparented away from CRIU when the
    swrk child exits and does not depend on the daemon. ``place`` gets
    CRIU's pid before CRIU sees the request (to record it, or to move it into a
    cgroup); without ``manage_cgroups`` CRIU leaves cgroups alone, so a tree
    whose CRIU was moved into a group is born there (see ``snapd_daemon.host.cgroups``).
    ``inherit``: (CRIU key, fd of ours) for resources the tree gets in place of
    the dumped ones (CRIU's inherit_fd). ``tcp``: for images with established TCP
    connections, "close" restores their sockets closed (the server sees them fail),
    "reestablish" restores them connected. ``ext_unix_sk``: the images hold unix
    sockets whose peers were outside the tree; they come back unconnected.
    ``own_mntns``: the images hold a mount namespace (dumped with ``own_mntns``); each
    restore makes a new one whose root is CRIU's "/", its external mounts bound from
    CRIU's own namespace, its procfs mounted anew for the restored pid namespace.
    ``join``: (namespace kind, namespace file) the root task enters before it restores
    anything (CRIU's join_ns; its children inherit them). CRIU makes a namespace the
    images hold anew after the join, and cannot join a pid namespace.
    """
    opts = rpc_pb2.Opts(images_dir_fd=-1, shell_job=shell_job, file_locks=True, log_level=log_level,
                        leave_stopped=True, ext_unix_sk=ext_unix_sk, lazy_pages=lazy_pages)
    if tcp:
        opts.tcp_established = True
        opts.tcp_close = tcp == "close"
        opts.network_lock = rpc_pb2.NFTABLES
    for key, fd in inherit:
        opts.inherit_fd.add(key=key, fd=fd)
    for kind, ns_file in join:
        opts.join_ns.add(ns=kind, ns_file=ns_file)
    if not manage_cgroups:
        opts.manage_cgroups_mode = rpc_pb2.IGNORE
    if own_mntns:
        opts.root = "/"
        opts.auto_ext_mnt = opts.ext_sharing = opts.ext_masters = True
    resp = _run(criu, "restore", root_pid, opts, images, work, RESTORE_LOG, notify, place,
                tuple(fd for _, fd in inherit))
    return resp.restore.pid
