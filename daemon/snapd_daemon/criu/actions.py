"""Dump and restore requests to CRIU, with failures turned into CriuFailed.

A failure message carries CRIU's own error text and the error lines at the
end of CRIU's log, and names the pid.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from snapd_daemon.cgroups import Cgroup
from snapd_daemon.criu import rpc_pb2, swrk
from snapd_daemon.criu.binary import Criu
from snapd_daemon.errors import CriuFailed

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
_TAIL_LINES = 12


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last error lines of a CRIU log (else its last lines); '' if there is no log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    errors = [ln for ln in text if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    return "\n".join((errors or text)[-lines:])


def _run(
    criu: Criu,
    action: str,
    pid: int,
    opts: rpc_pb2.Opts,
    images: Path,
    work: Path,
    log_name: str,
    on_notify: swrk.NotifyHook | None,
    place: swrk.PlaceHook | None = None,
) -> rpc_pb2.Resp:
    with contextlib.ExitStack() as fds:
        images_fd = swrk.open_dir(images)
        fds.callback(os.close, images_fd)
        work_fd = swrk.open_dir(work)
        fds.callback(os.close, work_fd)
        return _call(criu, action, pid, opts, images_fd, work_fd, work, log_name, on_notify, place)


def _call(
    criu: Criu,
    action: str,
    pid: int,
    opts: rpc_pb2.Opts,
    images_fd: int,
    work_fd: int,
    work: Path,
    log_name: str,
    on_notify: swrk.NotifyHook | None,
    place: swrk.PlaceHook | None,
) -> rpc_pb2.Resp:
    try:
        opts.images_dir_fd = images_fd
        opts.work_dir_fd = work_fd
        opts.log_file = log_name
        opts.notify_scripts = on_notify is not None
        req_type = rpc_pb2.DUMP if action == "dump" else rpc_pb2.RESTORE
        return swrk.call(
            criu.path,
            rpc_pb2.Req(type=req_type, opts=opts),
            pass_fds=(images_fd, work_fd),
            on_notify=on_notify,
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
            action=action, pid=pid, reason=str(exc), log=work / log_name, log_tail=log_tail(work / log_name)
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
    on_notify: swrk.NotifyHook | None = None,
) -> None:
    """Dump the tree rooted at ``pid`` into ``images``. The tree is always left
    running by CRIU; stopping it is the caller's decision, made only once the
    snapshot is durable."""
    opts = rpc_pb2.Opts(
        images_dir_fd=-1,
        pid=pid,
        leave_running=True,
        shell_job=shell_job,
        file_locks=True,
        log_level=log_level,
        timeout=freeze_timeout,
    )
    _run(criu, "dump", pid, opts, images, work, DUMP_LOG, on_notify)


def restore(
    criu: Criu,
    root_pid: int,
    images: Path,
    work: Path,
    *,
    shell_job: bool,
    log_level: int,
    on_notify: swrk.NotifyHook | None = None,
    cgroup: Cgroup | None = None,
) -> int:
    """Restore the images in ``images`` (read-only); returns the restored root pid.

    The restored tree is detached: it is reparented away from CRIU when the
    swrk child exits and does not depend on the daemon. With ``cgroup``, CRIU
    is moved into that group before it gets the request and leaves cgroups
    alone, so the whole tree is born there (see ``snapd_daemon.cgroups``).
    """
    opts = rpc_pb2.Opts(images_dir_fd=-1, shell_job=shell_job, file_locks=True, log_level=log_level)
    if cgroup is not None:
        opts.manage_cgroups_mode = rpc_pb2.IGNORE
    resp = _run(criu, "restore", root_pid, opts, images, work, RESTORE_LOG, on_notify,
                cgroup.adopt if cgroup is not None else None)
    return resp.restore.pid
