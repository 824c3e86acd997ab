"""Durable file-system primitives: write-once files and directory renames."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
# in the name of every temporary file write_atomic makes; sweeps at start look for it
TMP_MARK = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush every dirty page of the file system holding ``path`` (one call
    instead of an fsync per file when many files were just written)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``path`` so that readers see the old state or all of ``data``, never a part.

    tmp file in the same directory -> fsync -> rename -> fsync directory; a failure
    removes the tmp file (its name: ``.<name>.tmp-<pid>-<thread>``). Without
    ``durable`` the two fsyncs are left out: readers (a restarted daemon included)
    still see old or new, but a power loss may lose the write; for files that only
    describe the running system, which a reboot ends anyway.
    """
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a failed write (ENOSPC) leaves no temporary behind
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file
        raise
    if durable:
        fsync_path(path.parent)


def remove_temporaries(directory: Path) -> int:
    """Remove what write_atomic calls killed mid-way left in ``directory``; how many. Only
    before the daemon serves (no write is under way then)."""
    removed = 0
    for tmp in directory.glob(f".*{TMP_MARK}*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def tree_size(path: Path) -> int:
    """Sum of the sizes of the regular files under ``path`` (0 if it vanished meanwhile)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total
