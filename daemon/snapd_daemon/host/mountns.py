"""A mount namespace of its own for a `snapd run` tree, with a /proc of its pid namespace.

A process in a new pid namespace that reads the host's /proc sees other
processes under its own pid numbers: /proc/1 is the host's init, /proc/self
resolves through the host's pids. libcuda looks itself up by its pid as seen
from inside, so CUDA fails to initialise (``cudaGetDeviceCount`` error 304)
unless /proc belongs to the tree's pid namespace. ``private_proc`` gives the
caller (the namespace's init, already pid 1) what ``unshare --mount-proc``
gives: a new mount namespace whose whole tree is made private (no mount or
unmount propagates to or from the host), the host's /proc (and the mounts
under it) detached there, and a procfs of the caller's pid namespace mounted
on /proc.

The tree's mount namespace is then a private copy of the host's, plus that
one /proc. CRIU dumps it because it differs from CRIU's own; every mount but
/proc is a copy of a mount CRIU itself sees, which ``auto_ext_mnt`` records as
external (restored by binding the same host mount), and /proc is recorded as a
procfs that CRIU mounts anew inside each restored copy's pid namespace (see
``snapd_daemon.criu.actions``).

Files the init inherited (stdio on /dev/null or a log file) were opened through
the host's mounts, which CRIU cannot name from inside the tree's namespace:
``reopen_inherited`` opens each again by its path through the tree's own copy
of that mount, with the same flags and offset; fds that shared one open file (a
server's stdout and stderr after ``>log 2>&1``) share the one opened again, so that
their writes still follow each other instead of overwriting each other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
_REOPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# kcmp(2) (which CRIU needs too): its syscall number on this architecture (None: not known here,
# and fds are then opened again one by one), and its "same open file" type
_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)
_KCMP_FILE = 0


def _check(what: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_proc() -> None:
    """Move the caller into a new, private mount namespace with /proc of its pid namespace.
    Raises OSError naming the step that failed."""
    _check("unshare(CLONE_NEWNS)", _libc.unshare(CLONE_NEWNS))
    _check("make / private (mount --make-rprivate /)", _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
    if os.path.ismount("/proc"):
        _check("umount the host's /proc", _libc.umount2(b"/proc", MNT_DETACH))
    _check("mount proc on /proc", _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None))


def _fdinfo(fd: int) -> tuple[int, int]:
    """(flags, offset) of the caller's ``fd``."""
    fields = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["flags"], 8), int(fields["pos"])


def _same_file(a: int, b: int) -> bool:
    """Whether the caller's fds ``a`` and ``b`` are one open file description."""
    if _SYS_KCMP is None:
        return False
    pid = os.getpid()
    return int(_libc.syscall(_SYS_KCMP, pid, pid, _KCMP_FILE, a, b)) == 0


def reopen_inherited() -> None:
    """Open again, in the caller's (new) mount namespace, every inheritable fd that
    names a file by path; pipes, sockets and deleted files are left as they are.
    Raises OSError naming the fd and path that cannot be opened."""
    # (a copy of an fd as inherited, the fd opened again for it): later fds sharing its file get the same
    done: list[tuple[int, int]] = []
    try:
        for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
            _reopen(fd, done)
    finally:
        for copy, fresh in done:
            os.close(copy)
            os.close(fresh)


def _reopen(fd: int, done: list[tuple[int, int]]) -> None:
    """Open ``fd`` again (see reopen_inherited), or give it the fd opened for its file before."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:  # the listing's own fd, closed by now
        return
    if not target.startswith("/") or target.endswith(" (deleted)") or not os.get_inheritable(fd):
        return
    shared = next((fresh for copy, fresh in done if _same_file(copy, fd)), None)
    if shared is not None:
        os.dup2(shared, fd)
        return
    flags, offset = _fdinfo(fd)
    try:
        fresh = os.open(target, flags & _REOPEN_MASK)
    except OSError as exc:
        raise OSError(exc.errno, f"reopen fd {fd} ({target}) in the new mount namespace: {exc.strerror}") from exc
    if offset and not flags & os.O_APPEND:
        os.lseek(fresh, offset, os.SEEK_SET)
    done.append((os.dup(fd), fresh))  # both close-on-exec
    os.dup2(fresh, fd)
