"""One address space a post-copy fill (postcopy.py) writes into: the userfaultfd of a
restored task, or of a child it forked since, with what is still to fill there.

Its ``AddressMap`` (addrmap.py) is built from the plan's spans for its pid once the plan
exists; events read from its uffd before then wait in ``early`` and are applied, in
order, when it comes, so a map never misses a change the process made.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from snapd_daemon.host import memwrite, uffd
from snapd_daemon.restore.addrmap import AddressMap, Event
from snapd_daemon.restore.fillplan import FillPlan

HOLE_RUN = 2 << 20  # a fault in a hole maps the zero page up to the end of its 2 MiB (``zero_hole``)


@dataclass(eq=False)
class AddressSpace:
    """One address space: the uffd of a restored task, or of a child it forked since."""

    fd: int
    pid: int  # the image pid of the task restored (a forked child: of its ancestor)
    forked: bool
    addresses: AddressMap = field(default_factory=lambda: AddressMap(()))  # built by ``planned``
    early: list[Event] | None = field(default_factory=list)  # events read before the plan; None after
    wanted: set[int] = field(default_factory=set)  # batches still to fill in here
    gone: bool = False
    messages: int = 0  # events read from its uffd (forks too): what explains a refused COPY
    # batch -> (piece, offset in it) reached when the batch was left for after CRIU (postcopy.py)
    partial: dict[int, tuple[int, int]] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)  # faults at planned bytes deferred before CRIU returned

    def planned(self, plan: FillPlan) -> None:
        """Take the plan's batches and memory for this pid, then the events read before it (once:
        ``early`` is None from then on)."""
        self.wanted = plan.batches_of(self.pid)
        self.addresses = AddressMap(((s, e) for s, e, _ in plan.spans.get(self.pid, ())), self.early or ())
        self.early = None

    def change(self, event: Event) -> None:
        """Apply ``event`` to the map, or keep it for ``planned`` when there is no plan yet."""
        if self.early is None:
            self.addresses.apply(event)
        else:
            self.early.append(event)

    def zero_hole(self, address: int) -> None:
        """The zero page at ``address``, a page with no planned bytes, and up to ``HOLE_RUN`` of
        the hole after it (to where the next planned bytes are now, moved or not): one fault,
        not one per page, for a reader walking never-touched memory. A run that leaves its
        mapping (ENOENT) falls back to the page; one that meets a present page stops there."""
        planned = self.addresses.next_start(address)
        end = min((address | (HOLE_RUN - 1)) + 1, planned if planned is not None else 1 << 64)
        try:
            uffd.zeropage(self.fd, address, end - address)
        except uffd.FillError as exc:
            if exc.errno == errno.ENOENT and end - address > uffd.PAGE:
                uffd.zeropage(self.fd, address, uffd.PAGE)
            elif exc.errno != errno.EEXIST or exc.address == address:
                raise

    def copy(self, dst: int, data: memoryview | int, at: int, n: int, filled: Callable[[int], None]) -> None:
        """Fill [dst, dst + n) with ``data[at:at + n]`` (an int: zeros), ``filled`` told of each
        part filled. Raises FillError on EAGAIN and ENOENT (the kernel looks the range up before
        it looks for a pending event: a range unmapped or moved is ENOENT until its event is
        read), and on any refusal but these two: ESRCH (the process is gone: ``gone`` is set,
        the restore's checks judge that) and, in a forked child, EEXIST (a page it has written
        since its fork, skipped)."""
        while n > 0:
            try:
                if isinstance(data, int):
                    uffd.zeropage(self.fd, dst, n)
                else:
                    with memwrite.addresses([data[at : at + n]]) as [(src, _)]:
                        uffd.copy(self.fd, dst, src, n)
                filled(n)
                return
            except uffd.FillError as exc:
                if exc.errno == errno.ENOENT and n > uffd.PAGE:  # maybe two mappings now (mprotect): halves
                    half = n // 2 & ~(uffd.PAGE - 1)
                    self.copy(dst, data, at, half, filled)
                    self.copy(dst + half, data, at + half, n - half, filled)
                    return
                if exc.errno == errno.ESRCH:
                    self.gone = True
                    return
                if exc.errno != errno.EEXIST or not self.forked:
                    raise
                skip = exc.address - dst + uffd.PAGE
                dst, at, n = dst + skip, at + skip, n - skip
