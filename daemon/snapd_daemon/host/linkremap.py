"""Links that keep open files whose name was unlinked (CRIU's link-remap) for every restore.

A file a process opened, whose name was then unlinked while another name still
links it (zdtm's unlink_fstat03), can only be reopened through a name. With
``link_remap`` CRIU's dump links it as ``<dir>/link_remap.<N>`` in the directory
the file was opened from (or the nearest existing parent), and its images name
that link; a restore opens it there and unlinks it. Because snapd always dumps
with the tree left running, CRIU removes those links again right after its
post-dump point, so at that point snapd gives each a name of its own beside it,
``<dir>/.snapd-keep.<operation>.link_remap.<N>`` (same file system, same inode):

- a checkpoint that fails removes the names it made (CRIU removes its own);
- each restore links CRIU's name from the kept one before CRIU runs, and removes
  it after CRIU if CRIU has not (a failed restore);
- deleting the snapshot removes the kept names.

Only absolute paths whose last part has the kept names' form are ever linked from or
removed: a manifest names them, and one imported from elsewhere must not make the
daemon remove or link any other file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from snapd_daemon.errors import LinkRemapFailed, LinkRemapMissing
from snapd_daemon.host.procfds import fd_links

_DELETED = " (deleted)"
_CRIU_NAME = re.compile(r"link_remap\.\d+")
_KEPT_PREFIX = ".snapd-keep."
_KEPT_NAME = re.compile(r"\.snapd-keep\.[A-Za-z0-9-]+\.(link_remap\.\d+)")
log = structlog.get_logger()
_RELINKING = threading.Lock()  # held while CRIU restores a snapshot with such links (``relinked``)


@dataclass(frozen=True)
class UnlinkedFile:
    """An open (or mapped) regular file of the tree whose name is gone but that another
    name still links: where CRIU will link it, and which inode it is."""

    pid: int
    directory: str
    dev: int
    ino: int


def unlinked_open_files(pids: list[int]) -> list[UnlinkedFile]:
    """Such files of these processes, by their fds and file mappings (root reads both)."""
    found: dict[tuple[int, int], UnlinkedFile] = {}
    for pid in pids:
        for table in ("fd", "map_files"):
            for entry, target in fd_links(pid, table):
                if not target.endswith(_DELETED) or not target.startswith("/"):
                    continue
                try:
                    st = os.stat(f"/proc/{pid}/{table}/{entry}")
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 0:
                    found.setdefault((st.st_dev, st.st_ino), UnlinkedFile(
                        pid, _existing_parent(target.removesuffix(_DELETED)), st.st_dev, st.st_ino))
    return list(found.values())


def _existing_parent(path: str) -> str:
    """The nearest directory above ``path`` that exists (CRIU climbs the same way)."""
    parent = os.path.dirname(path)
    while parent != "/" and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    return parent


def keep(files: list[UnlinkedFile], operation_id: str, noting: Callable[[list[str]], None]) -> list[str]:
    """Give each of CRIU's link_remap links to ``files`` a name of snapd's beside it (call
    at the post-dump point, before CRIU removes its own); the names made, absolute paths.
    ``noting`` gets the names before any is made (a daemon killed while making them finds
    them in its hold record). LinkRemapFailed, with nothing left, when one cannot be made."""
    planned = [(path, owner, _kept_name(path, operation_id)) for path, owner in _criu_links(files)]
    if not planned:
        return []
    noting([target for _, _, target in planned])
    kept: list[str] = []
    try:
        for path, owner, target in planned:
            try:
                os.link(path, target)
            except OSError as exc:
                raise LinkRemapFailed(path=path, pid=owner.pid, reason=exc.strerror or str(exc)) from exc
            kept.append(target)
    except BaseException:
        remove(kept)
        raise
    return kept


def _kept_name(criu_link: str, operation_id: str) -> str:
    directory, name = os.path.split(criu_link)
    return os.path.join(directory, f"{_KEPT_PREFIX}{operation_id}.{name}")


def _criu_links(files: list[UnlinkedFile]) -> list[tuple[str, UnlinkedFile]]:
    """CRIU's link_remap links to ``files``, in the directories CRIU puts them in, with the
    file each links."""
    wanted = {(f.dev, f.ino): f for f in files}
    found = []
    for directory in sorted({f.directory for f in files}):
        try:
            names = os.listdir(directory)
        except OSError as exc:
            owner = next(f for f in files if f.directory == directory)
            raise LinkRemapFailed(path=directory, pid=owner.pid, reason=exc.strerror or str(exc)) from exc
        for name in names:
            if not _CRIU_NAME.fullmatch(name):
                continue
            path = os.path.join(directory, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            owner = wanted.get((st.st_dev, st.st_ino))
            if owner is not None:
                found.append((path, owner))
    return found


def _is_kept(path: str) -> bool:
    """Whether ``path`` has the form of a name ``keep`` makes."""
    return os.path.isabs(path) and _KEPT_NAME.fullmatch(os.path.basename(path)) is not None


def criu_name(kept: str) -> str:
    """The link CRIU's images name for a name ``keep`` made."""
    directory, name = os.path.split(kept)
    match = _KEPT_NAME.fullmatch(name)
    assert match is not None, kept
    return os.path.join(directory, match.group(1))


def relink(snapshot_id: str, kept: list[str]) -> list[str]:
    """Before a restore: link each of CRIU's names from its kept one; the names this made
    (``remove`` them after CRIU). LinkRemapMissing when a kept name is gone or
    CRIU's name holds another file, with nothing made."""
    made: list[str] = []
    try:
        for path in kept:
            if not _is_kept(path):
                raise LinkRemapMissing(snapshot_id=snapshot_id, path=path, reason="it is no link snapd kept")
            name = criu_name(path)
            try:
                os.link(path, name)
                made.append(name)
            except FileExistsError:
                if not os.path.samefile(path, name):
                    raise LinkRemapMissing(snapshot_id=snapshot_id, path=path,
                                           reason=f"{name} exists and is another file") from None
            except OSError as exc:
                reason = "it was removed" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
                raise LinkRemapMissing(snapshot_id=snapshot_id, path=path, reason=reason) from exc
    except BaseException:
        remove(made)
        raise
    return made


@contextlib.contextmanager
def relinked(snapshot_id: str, kept: list[str]) -> Iterator[None]:
    """CRIU's names linked from the ``kept`` ones of a snapshot (``relink``) while CRIU restores
    it, removed after (CRIU removes them when it succeeds); one restore at a time, as two
    snapshots may give CRIU the same names (link_remap.N)."""
    if not kept:
        yield
        return
    with _RELINKING:
        made = relink(snapshot_id, kept)
        try:
            yield
        finally:
            remove(made)


def remove(paths: list[str]) -> None:
    """Remove these names; one already gone is fine, one that cannot be removed is logged
    (a name left over costs a file's worth of disk, never a restore)."""
    for path in paths:
        if not _is_kept(path) and not _CRIU_NAME.fullmatch(os.path.basename(path)):
            log.warning("link_remap.not_removed", path=path, error="it is no link snapd or CRIU made")
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("link_remap.not_removed", path=path, error=exc.strerror or str(exc))
