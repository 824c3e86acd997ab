"""Write-once chunk files under ``chunks/<first two hex digits>/<blake3 hex>``.

A chunk file appears under its final name only once its bytes are durable
(``stage`` then ``publish``); temporaries carry ``.tmp-`` in their name, are
never listed, and a ``stage`` that fails removes its own. A file leaves its
name only by ``remove`` (gc) or ``move_out`` (quarantine), and ``move_out``
moves only the very file that failed its hash: never a good copy published
under the name meanwhile.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from snapd_daemon.store import codec
from snapd_daemon.store.model import ChunkLengthMismatch, ChunkUnreadable
from snapd_daemon.util.buffers import ReadBuffers, read_fd, read_file
from snapd_daemon.util.fsutil import fsync_path, syncfs

_TMP_MARK = ".tmp-"
_STAGED = itertools.count()


class StoredIds:
    """The chunks a store held when it was listed, by the first 64 bits of their ids
    (about 80 bytes of memory a chunk, against some 160 for whole ids): a chunk not in
    it was not stored then; one in it may only share those bits with a stored one
    (``ChunkDir.exists`` tells). ``current``: no chunk was published since."""

    def __init__(self, prefixes: frozenset[int], chunks: ChunkDir, generation: int) -> None:
        self._prefixes = prefixes
        self._chunks = chunks
        self._generation = generation

    def current(self) -> bool:
        return self._chunks.generation == self._generation

    def may_hold(self, cid: str) -> bool:
        return int(cid[:16], 16) in self._prefixes


class ChunkDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_name = str(root)
        root.mkdir(parents=True, exist_ok=True)
        # serialises giving a chunk its name (publish) with taking a bad file's away (move_out)
        self._names = threading.Lock()
        self.generation = 0  # publishes so far (a listing is exact while it stays the same)

    def naming(self) -> threading.Lock:
        """Held, no chunk gets or loses its name (publish, move_out)."""
        return self._names

    def path(self, cid: str) -> Path:
        return self.root / cid[:2] / cid

    def exists(self, cid: str) -> int:
        """Stored size of chunk ``cid``, or 0 if the store lacks it."""
        try:
            return os.stat(self.path(cid)).st_size
        except FileNotFoundError:
            return 0

    def stage(self, cid: str, parts: Sequence[bytes | memoryview]) -> Path:
        """Write chunk ``cid`` (its file's ``parts``, one after the other) under a temporary
        name: neither durable nor visible yet."""
        final = self.path(cid)
        # unique per stage call: thread idents are reused once a thread ends, and two imports
        # may stage the same chunk at once (O_EXCL: never another writer's file)
        tmp = final.with_name(f"{cid}{_TMP_MARK}{os.getpid()}-{next(_STAGED)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        # the first chunk of a prefix makes its directory (a mkdir for every chunk took 1.4%
        # of the ingest threads' time on the H200)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            final.parent.mkdir(exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            bufs = [memoryview(part) for part in parts]
            while bufs:
                n = os.writev(fd, bufs)
                while bufs and n >= len(bufs[0]):
                    n -= len(bufs.pop(0))
                if bufs:
                    bufs[0] = bufs[0][n:]
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write (ENOSPC) leaves no temporary behind
            raise
        finally:
            os.close(fd)
        return tmp

    def publish(self, staged: dict[str, Path]) -> set[str]:
        """Make staged chunks durable, then visible; returns the ids that were new.

        One syncfs makes every staged file's bytes durable before any of them
        gets its final name; a chunk another writer published meanwhile is
        kept as it is (``link`` refuses to replace it). Directories are synced last.
        """
        if not staged:
            return set()
        syncfs(self.root)
        with self._names:
            self.generation += 1  # before the first name: a listing made earlier is not exact any more
        added = set()
        for cid, tmp in staged.items():
            try:
                with self._names:
                    os.link(tmp, self.path(cid))
                added.add(cid)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        self.sync_prefixes(set(staged))
        return added

    def sync_prefixes(self, cids: set[str]) -> None:
        """fsync the directories holding these chunks' names."""
        for prefix in {c[:2] for c in cids}:
            fsync_path(self.root / prefix)
        if cids:
            fsync_path(self.root)

    def read(self, cid: str, buffers: ReadBuffers, length: int = 0, path: Path | None = None) -> memoryview:
        """Verified raw bytes of chunk ``cid``, a view into ``buffers``; raises ChunkUnreadable
        when it is missing or corrupt (then naming the file read, for ``move_out``).
        ``length``, the chunk's raw length when known, bounds the file (a stored chunk is
        never larger than its header and raw bytes) and spares a stat; an intact chunk of
        another length raises ChunkLengthMismatch (naming no file: the chunk is not at
        fault). ``path``: read this file instead of the chunk's own (a staged temporary)."""
        return self._read(cid, buffers, length, path)[1]

    def read_file(self, cid: str, view: memoryview) -> memoryview | None:
        """The first bytes of chunk ``cid``'s file, up to ``len(view)``, read into ``view`` and
        NOT checked (``codec.decode_many`` and a hash do that); None if it is missing."""
        try:
            return read_file(self._name(cid), view)
        except FileNotFoundError:
            return None

    def read_stored(self, cid: str, path: Path | None = None) -> bytes:
        """Chunk ``cid`` as stored (codec.py's form), in fresh memory, after checking that it
        decodes to its hash; raises ChunkUnreadable like ``read``."""
        return bytes(self._read(cid, ReadBuffers(), 0, path)[0])

    def _read(self, cid: str, buffers: ReadBuffers, length: int, path: Path | None) -> tuple[memoryview, memoryview]:
        """(the file's bytes, the verified raw bytes), both views into ``buffers``."""
        try:
            fd = os.open(path if path is not None else self._name(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ChunkUnreadable(cid, "missing") from None
        try:
            blob = buffers.stored(codec.HEADER.size + length + 1 if length else os.fstat(fd).st_size)
            blob = blob[: read_fd(fd, blob)]
            try:
                raw = memoryview(codec.decode(blob, cid, buffers))
            except codec.ChunkDecodeError as exc:
                if not (length and len(blob) >= codec.HEADER.size and codec.HEADER.unpack_from(blob)[2] != length):
                    st = os.fstat(fd)
                    raise ChunkUnreadable(cid, f"corrupt ({exc})", (st.st_dev, st.st_ino)) from None
                # the file says another length than the caller: read whole, its own hash decides
                blob, raw = self._read(cid, buffers, 0, path)
        finally:
            os.close(fd)
        if length and len(raw) != length:
            raise ChunkLengthMismatch(cid, len(raw), length)
        return blob, raw

    def _name(self, cid: str) -> str:
        """``path(cid)`` as a string, without pathlib's cost (once per chunk read)."""
        return f"{self._root_name}/{cid[:2]}/{cid}"

    def move_out(self, cid: str, file_id: tuple[int, int], dest: Path) -> bool:
        """Rename chunk ``cid`` to ``dest`` (same file system) if its name still holds the file
        ``file_id`` (st_dev, st_ino); False when that file is gone already (another reader moved
        it) or a fresh copy replaced it."""
        path = self.path(cid)
        with self._names:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            if (st.st_dev, st.st_ino) != file_id:
                return False
            os.rename(path, dest)
        self.sync_prefixes({cid})
        return True

    def all(self) -> Iterator[tuple[str, int]]:
        """Every stored chunk and its size (temporary files excluded). Safe beside a gc or a
        quarantine move: a chunk whose name goes while it is listed is left out."""
        for sub in self.root.iterdir():
            for entry in os.scandir(sub):
                if _TMP_MARK not in entry.name:
                    try:
                        yield entry.name, entry.stat().st_size
                    except FileNotFoundError:
                        continue

    def listing(self) -> StoredIds:
        """The chunks stored now (temporaries left out), for many ``exists`` questions at
        the cost of one pass over the directories."""
        generation = self.generation  # read first: a publish during the pass makes it stale
        return StoredIds(frozenset(int(name[:16], 16) for sub in os.scandir(self.root)
                                   for name in os.listdir(sub.path) if _TMP_MARK not in name), self, generation)

    def remove(self, cid: str) -> None:
        self.path(cid).unlink(missing_ok=True)

    def remove_temporaries(self) -> int:
        """Delete temporary files a crashed writer left; returns how many."""
        count = 0
        for sub in self.root.iterdir():
            for entry in os.scandir(sub):
                if _TMP_MARK in entry.name:
                    os.unlink(entry.path)
                    count += 1
        return count
