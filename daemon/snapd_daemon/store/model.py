"""The store's vocabulary: chunk references, pieces of a file to store, and the
error a chunk read raises. Nothing here knows what the bytes mean."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# The id of a chunk of zeros: never stored, read back as zeros.
ZERO_CHUNK = ""


@dataclass(frozen=True)
class ChunkRef:
    """``length`` bytes of a file; ``id`` is the BLAKE3 hex of them, or ZERO_CHUNK for zeros."""

    id: str
    length: int


@dataclass(frozen=True)
class Piece:
    """``length`` bytes at ``offset`` of a file being stored: one chunk."""

    offset: int
    length: int


class ChunkUnreadable(Exception):
    """Chunk ``cid`` cannot be read back as stored: ``problem`` says why (missing, or corrupt and how).
    ``file_id`` is (st_dev, st_ino) of the file that failed its hash; None when there was no file."""

    def __init__(self, cid: str, problem: str, file_id: tuple[int, int] | None = None) -> None:
        super().__init__(f"chunk {cid}: {problem}")
        self.cid = cid
        self.problem = problem
        self.file_id = file_id


class ChunkLengthMismatch(ChunkUnreadable):
    """Chunk ``cid`` is intact (its bytes hash to its id) but ``actual`` bytes long where the
    reader was told ``expected``: the reference is wrong, not the chunk, which stays where it is."""

    def __init__(self, cid: str, actual: int, expected: int) -> None:
        super().__init__(cid, f"{actual} bytes long (intact), where the snapshot's manifest says {expected}")
        self.actual = actual
        self.expected = expected


def chunk_offsets(chunks: tuple[ChunkRef, ...]) -> Iterator[tuple[int, ChunkRef]]:
    """(offset in the file, chunk) for each chunk of a file stored as ``chunks``."""
    offset = 0
    for ref in chunks:
        yield offset, ref
        offset += ref.length
