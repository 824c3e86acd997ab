"""Where memory planned at checkpoint addresses is now, in an address space that ran meanwhile.

A post-copy restore (postcopy.py) fills a running tree, so a process may move
or drop parts of its memory before they are filled. Its userfaultfd reports each
such change as an event; an ``AddressLog`` keeps them in order and translates:
``forward`` maps a planned range (checkpoint addresses) to where its parts are
now, leaving out what was dropped (munmap, madvise(MADV_DONTNEED/REMOVE): the
process must read zeros there, not the plan's bytes); ``back`` maps an address
of today to the checkpoint address whose bytes belong there, or None when what
is there now was made after the restore (a fresh page: zeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snapd_daemon.host.uffd import Remap, Remove, Unmap

Event = Remap | Remove | Unmap
Segment = tuple[int, int, int]  # address now, bytes, offset in the planned range


@dataclass
class AddressLog:
    events: list[Event] = field(default_factory=list)

    def add(self, event: Event) -> None:
        self.events.append(event)

    def copy(self) -> AddressLog:
        return AddressLog(list(self.events))

    def forward(self, start: int, length: int) -> list[Segment]:
        """The parts of [start, start + length) still present, where they are now, in the
        range's order."""
        segments: list[Segment] = [(start, length, 0)]
        for event in self.events:
            if isinstance(event, Remap):
                moved: list[Segment] = []
                kept: list[Segment] = []
                for seg in segments:
                    inside, outside = _split(seg, event.source, event.source + event.length)
                    moved += [(a - event.source + event.dest, n, o) for a, n, o in inside]
                    kept += outside
                # what was at the destination is replaced by the moved range
                segments = [p for seg in kept for p in _split(seg, event.dest, event.dest + event.length)[1]] + moved
            else:
                segments = [p for seg in segments for p in _split(seg, event.start, event.end)[1]]
        return sorted(segments, key=lambda s: s[2])

    def back(self, address: int) -> int | None:
        """The checkpoint address whose planned bytes belong at ``address`` now; None when the
        page there was dropped or replaced since (it is a fresh page)."""
        for event in reversed(self.events):
            if isinstance(event, Remap):
                if event.dest <= address < event.dest + event.length:
                    address += event.source - event.dest
                elif event.source <= address < event.source + event.length:
                    return None
            elif event.start <= address < event.end:
                return None
        return address


def _split(seg: Segment, lo: int, hi: int) -> tuple[list[Segment], list[Segment]]:
    """``seg`` cut by [lo, hi): (the part inside, the parts outside)."""
    a, n, o = seg
    end = a + n
    if end <= lo or a >= hi:
        return [], [seg]
    inside = [(max(a, lo), min(end, hi) - max(a, lo), o + max(a, lo) - a)]
    outside = []
    if a < lo:
        outside.append((a, lo - a, o))
    if end > hi:
        outside.append((hi, end - hi, o + hi - a))
    return inside, outside
