"""Where memory planned at checkpoint addresses is now, in an address space that ran meanwhile.

A post-copy restore (postcopy.py) fills a running tree, so a process may move
or drop parts of its memory before they are filled. Its userfaultfd reports each
such change as an event; an ``AddressMap`` applies them to the planned memory of
one address space and translates: ``forward`` maps a planned range (checkpoint
addresses) to where its parts are now, leaving out what was dropped (munmap,
madvise(MADV_DONTNEED/REMOVE): the process must read zeros there, not the plan's
bytes); ``back`` maps an address of today to the checkpoint address whose planned
bytes belong there, or None (a page never planned, or what is there now was made
after the restore: a fresh page, zeros).

The map holds segments (checkpoint address, bytes, address now), the planned
bytes still present, each where it is now; at first every planned span where it
was. Invariants: no segment is empty; segments are disjoint both by checkpoint
address and by address now (an event moves bytes only onto addresses it empties
first); no two segments are adjacent in both spaces at once (they are joined), so
the map stays as small as the events left it and ``forward``'s answer is one
segment per run that is contiguous in both. Two sorted indexes (starts by address
now, starts by checkpoint address) make finding what an event touches O(log n), and
``forward`` / ``back`` O(log n + their answer); a split or a move inserts into those
lists (a memmove of at most n entries, in C).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable

from snapd_daemon.host.uffd import Remap, Remove, Unmap

Event = Remap | Remove | Unmap
Segment = tuple[int, int, int]  # address now, bytes, offset in the planned range


class AddressMap:
    """The planned memory of one address space, where it is now (see the module's docstring).
    ``changes`` counts the events applied."""

    def __init__(self, spans: Iterable[tuple[int, int]], events: Iterable[Event] = ()) -> None:
        """``spans``: the planned ranges [start, end), checkpoint addresses, sorted; then
        ``events`` (those that came before the plan existed) are applied in order."""
        self._nows: list[int] = []  # segment starts by address now, sorted
        self._ckpts: list[int] = []  # segment starts by checkpoint address, sorted
        self._at: dict[int, tuple[int, int]] = {}  # address now -> (checkpoint address, bytes)
        self._now_of: dict[int, int] = {}  # checkpoint address -> address now
        self.changes = 0
        end = -1
        for start, stop in spans:
            if start < stop:
                if start <= end:  # touching (or overlapping) the previous one: the same segment
                    first = self._nows[-1]
                    stop = max(stop, first + self._at[first][1])
                    self._at[first] = (first, stop - first)
                else:
                    self._nows.append(start)
                    self._ckpts.append(start)
                    self._at[start] = (start, stop - start)
                    self._now_of[start] = start
                end = max(end, stop)
        for event in events:
            self.apply(event)

    def copy(self) -> AddressMap:
        """A map of its own for a forked child, as this one is now."""
        twin = AddressMap(())
        twin._nows, twin._ckpts = list(self._nows), list(self._ckpts)
        twin._at, twin._now_of = dict(self._at), dict(self._now_of)
        twin.changes = self.changes
        return twin

    def apply(self, event: Event) -> None:
        """Remove / Unmap [start, end): the planned bytes now there are dropped. Remap: the
        planned bytes now in [source, source + length) move by dest - source, and those in
        [dest, dest + length) that were not in the source are dropped (replaced)."""
        self.changes += 1
        if isinstance(event, Remap):
            self._remap(event.source, event.dest, event.length)
        else:
            self._cut(event.start)
            self._cut(event.end)
            for _, ckpt, _ in self._take(event.start, event.end):
                self._forget(ckpt)

    def forward(self, start: int, length: int) -> list[Segment]:
        """The planned parts of [start, start + length) still present, where they are now, in
        the range's order."""
        end = start + length
        k = max(bisect_right(self._ckpts, start) - 1, 0)
        found: list[Segment] = []
        for ckpt in self._ckpts[k : bisect_left(self._ckpts, end)]:
            now = self._now_of[ckpt]
            n = self._at[now][1]
            lo, hi = max(ckpt, start), min(ckpt + n, end)
            if lo < hi:
                found.append((now + lo - ckpt, hi - lo, lo - start))
        return found

    def back(self, address: int) -> int | None:
        """The checkpoint address whose planned bytes belong at ``address`` now; None when no
        planned bytes are there (never planned, dropped, or replaced since: a fresh page)."""
        k = bisect_right(self._nows, address) - 1
        if k < 0:
            return None
        now = self._nows[k]
        ckpt, n = self._at[now]
        return ckpt + address - now if address < now + n else None

    def next_start(self, address: int) -> int | None:
        """The lowest address now, at or after ``address``, where a segment begins; None if none."""
        k = bisect_left(self._nows, address)
        return self._nows[k] if k < len(self._nows) else None

    def _remap(self, source: int, dest: int, length: int) -> None:
        shift = dest - source
        edges = (source, source + length, dest, dest + length)
        for p in edges:
            self._cut(p)
        moved = self._take(source, source + length)
        for _, ckpt, _ in self._take(dest, dest + length):
            self._forget(ckpt)
        k = bisect_left(self._nows, dest)  # [dest, dest + length) is empty now
        self._nows[k:k] = [now + shift for now, _, _ in moved]
        for now, ckpt, n in moved:
            self._at[now + shift] = (ckpt, n)
            self._now_of[ckpt] = now + shift
        for p in (*edges, dest + shift, dest + length + shift):  # cuts made, and cuts that moved
            self._join(p)

    def _cut(self, address: int) -> None:
        """Split the segment that spans ``address`` (now) there, so one begins at it."""
        k = bisect_right(self._nows, address) - 1
        if k < 0:
            return
        now = self._nows[k]
        ckpt, n = self._at[now]
        if now < address < now + n:
            head = address - now
            self._at[now] = (ckpt, head)
            self._nows.insert(k + 1, address)
            self._at[address] = (ckpt + head, n - head)
            insort(self._ckpts, ckpt + head)
            self._now_of[ckpt + head] = address

    def _take(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Remove the segments beginning in [lo, hi) (now) from the index by address now;
        their (address now, checkpoint address, bytes), in order."""
        i, j = bisect_left(self._nows, lo), bisect_left(self._nows, hi)
        taken = [(now, *self._at.pop(now)) for now in self._nows[i:j]]
        del self._nows[i:j]
        return taken

    def _forget(self, ckpt: int) -> None:
        """Remove a segment already taken from the index by checkpoint address."""
        del self._now_of[ckpt]
        del self._ckpts[bisect_left(self._ckpts, ckpt)]

    def _join(self, address: int) -> None:
        """Join the segment that begins at ``address`` (now) to the one ending there, when
        their checkpoint addresses are contiguous too."""
        after = self._at.get(address)
        k = bisect_left(self._nows, address) - 1
        if after is None or k < 0:
            return
        now = self._nows[k]
        ckpt, n = self._at[now]
        if now + n == address and ckpt + n == after[0]:
            self._take(address, address + 1)
            self._forget(after[0])
            self._at[now] = (ckpt, n + after[1])
