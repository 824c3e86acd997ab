"""OS errors of the store's file systems in snapd's words: the one place ENOSPC and EDQUOT
become StoreFull (which an operation recasts into its own kind with ``StoreFull.recast``)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapd_daemon.errors import StoreError, StoreFull

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes free to an unprivileged writer in the file system of ``path`` (or of the nearest
    directory above it that exists)."""
    for where in (path, *path.parents):
        try:
            return shutil.disk_usage(where).free
        except OSError:
            continue
    return 0


def full(exc: OSError, root: Path, needed: int) -> StoreFull | None:
    """StoreFull naming the directory ``exc`` failed in (else ``root``) when ``exc`` says the
    file system (or a quota) is full; None for any other error."""
    if exc.errno not in SPACE_ERRNOS:
        return None
    where = Path(exc.filename).parent if exc.filename else root
    return StoreFull(path=where, needed=needed, free=free_bytes(where))


@contextmanager
def translated(root: Path, needed: int) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StoreFull (``needed`` bytes wanted) and other OS errors
    into StoreError, for a store rooted at ``root``."""
    try:
        yield
    except OSError as exc:
        raise (full(exc, root, needed) or StoreError(path=root, reason=describe(exc))) from exc


def describe(exc: OSError) -> str:
    """What the OS said and about which file, without Python's "[Errno N]"."""
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what
