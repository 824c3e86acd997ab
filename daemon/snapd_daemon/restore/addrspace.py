"""One address space a post-copy fill (postcopy.py) writes into: the userfaultfd of a
restored task, or of a child it forked since, with what is still to fill there.

Its ``AddressMap`` (addrmap.py) is built from the plan's spans for its pid once the plan
exists; events read from its uffd before then wait in ``early`` and are applied, in
order, when it comes, so a map never misses a change the process made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snapd_daemon.restore.addrmap import AddressMap, Event
from snapd_daemon.restore.fillplan import FillPlan


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
