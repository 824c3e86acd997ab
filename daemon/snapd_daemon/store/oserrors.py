"""OS errors of the store's file systems in snapd's words."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapd_daemon.errors import StoreError, StoreFull


@contextmanager
def translated(root: Path, needed: int) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StoreFull (``needed`` bytes wanted) and other OS errors
    into StoreError, for a store rooted at ``root``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = Path(exc.filename).parent if exc.filename else root
            raise StoreFull(path=where, needed=needed, free=shutil.disk_usage(root).free) from exc
        raise StoreError(path=root, reason=str(exc)) from exc
