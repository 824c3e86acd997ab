"""The post-copy fill's address map (restore/addrmap.py): where planned memory is now after a
running tree unmapped, discarded and moved parts of it. Pure translation, no processes."""

from __future__ import annotations

import random
from bisect import bisect_left

from snapd_daemon.host.uffd import Remap, Remove, Unmap
from snapd_daemon.restore.addrmap import AddressMap, Segment
from snapd_daemon.restore.addrspace import AddressSpace
from snapd_daemon.restore.delivery import Route, Target
from snapd_daemon.restore.fillplan import FillPlan
from snapd_daemon.store.model import ChunkRef

P = 0x1000
PAGES = 48  # the address space of the randomized runs, in pages


def test_the_address_map_follows_moves_and_drops_both_ways() -> None:
    addresses = AddressMap([(0x1000, 0xa000)])
    addresses.apply(Remove(0x3000, 0x5000))
    addresses.apply(Remap(0x8000, 0x20000, 0x2000))
    addresses.apply(Unmap(0x8000, 0xa000))  # the kernel reports a moving mremap's old range unmapped after the move
    addresses.apply(Unmap(0x20000, 0x21000))
    # a planned range [0x1000, 0xa000): its 2nd and 3rd pages dropped, [0x8000, 0xa000) moved, then half unmapped
    assert addresses.forward(0x1000, 0x9000) == [(0x1000, 0x2000, 0), (0x5000, 0x3000, 0x4000),
                                                 (0x21000, 0x1000, 0x8000)]
    assert addresses.back(0x21000) == 0x9000 and addresses.back(0x1000) == 0x1000
    assert addresses.back(0x3000) is None and addresses.back(0x8000) is None and addresses.back(0x20000) is None
    assert addresses.back(0xb000) is None  # never planned
    assert addresses.next_start(0x3000) == 0x5000 and addresses.next_start(0x8000) == 0x21000
    assert addresses.next_start(0x21001) is None and addresses.changes == 4


def test_moving_memory_back_where_it_was_leaves_one_segment() -> None:
    addresses = AddressMap([(0x10000, 0x14000), (0x14000, 0x18000)])  # touching spans are one segment
    addresses.apply(Remap(0x12000, 0x40000, 0x1000))
    assert len(addresses.forward(0x10000, 0x8000)) == 3
    addresses.apply(Remap(0x40000, 0x12000, 0x1000))
    assert addresses.forward(0x10000, 0x8000) == [(0x10000, 0x8000, 0)]
    assert addresses.next_start(0x10001) is None


def test_events_read_before_the_plan_apply_when_it_comes_in_a_child_forked_meanwhile_too() -> None:
    plan = FillPlan([[Route(ChunkRef("c", 0x4000), "pages-1.img", 0, [Target(0, 0x4000, 0x10000, pid=7)])]])
    parent = AddressSpace(-1, 7, forked=False)
    parent.change(Unmap(0x10000, 0x11000))
    child = AddressSpace(-1, 7, forked=True, addresses=parent.addresses.copy(), early=list(parent.early or ()))
    parent.change(Remap(0x12000, 0x30000, 0x1000))
    for mm in (parent, child):
        mm.planned(plan)
    assert parent.wanted == child.wanted == {0}
    assert parent.addresses.forward(0x10000, 0x4000) == [(0x11000, 0x1000, 0x1000), (0x30000, 0x1000, 0x2000),
                                                         (0x13000, 0x1000, 0x3000)]
    assert child.addresses.forward(0x10000, 0x4000) == [(0x11000, 0x3000, 0x1000)]
    child.change(Remove(0x11000, 0x12000))
    assert child.addresses.back(0x11000) is None and child.addresses.changes == 2


class _Pages:
    """The reference: page now -> checkpoint page, each event applied page by page."""

    def __init__(self, at: dict[int, int]) -> None:
        self.at = at

    def apply(self, event: Remap | Remove | Unmap) -> None:
        if isinstance(event, Remap):
            source, dest, n = event.source // P, event.dest // P, event.length // P
            moved = {page - source + dest: ck for page, ck in self.at.items() if source <= page < source + n}
            kept = {page: ck for page, ck in self.at.items()
                    if not source <= page < source + n and not dest <= page < dest + n}
            self.at = kept | moved
        else:
            self.at = {page: ck for page, ck in self.at.items() if not event.start // P <= page < event.end // P}

    def forward(self, start: int, end: int) -> list[Segment]:
        """[start, end) in pages; segments in bytes, runs contiguous in both spaces joined."""
        now_of = {ck: page for page, ck in self.at.items()}
        found: list[Segment] = []
        for ck in range(start, end):
            if ck not in now_of:
                continue
            if found and ck - 1 in now_of and now_of[ck - 1] + 1 == now_of[ck]:
                now, n, at = found[-1]
                found[-1] = (now, n + P, at)
            else:
                found.append((now_of[ck] * P, P, (ck - start) * P))
        return found

    def starts(self) -> list[int]:
        return sorted(page for page, ck in self.at.items() if self.at.get(page - 1) != ck - 1)


def _event(rng: random.Random) -> Remap | Remove | Unmap:
    kind = rng.choice((Remap, Remove, Unmap))
    if kind is Remap:
        n = rng.randint(1, 12)
        return Remap(rng.randrange(PAGES - n) * P, rng.randrange(PAGES - n) * P, n * P)  # they may overlap
    start = rng.randrange(PAGES)
    return kind(start * P, rng.randint(start + 1, PAGES) * P)


def _spans(rng: random.Random) -> list[tuple[int, int]]:
    spans, page = [], rng.randrange(4)
    while page < PAGES - 2:
        end = rng.randint(page + 1, min(page + 8, PAGES))
        spans.append((page * P, end * P))
        page = end + rng.choice((0, 0, 1, 3))  # some touch the one before
    return spans


def test_the_address_map_agrees_with_a_page_by_page_model_over_random_events() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        spans = _spans(rng)
        pairs = [(AddressMap(spans), _Pages({p: p for s, e in spans for p in range(s // P, e // P)}))]
        for _ in range(rng.randint(1, 14)):
            if rng.random() < 0.15:  # a fork: the child goes on from here on its own
                addresses, model = rng.choice(pairs)
                pairs.append((addresses.copy(), _Pages(dict(model.at))))
            event = _event(rng)
            addresses, model = rng.choice(pairs)
            addresses.apply(event)
            model.apply(event)
        for addresses, model in pairs:
            for page in range(PAGES + 12):
                ck = model.at.get(page)
                assert addresses.back(page * P + 5) == (None if ck is None else ck * P + 5), (seed, page)
            for _ in range(6):
                start = rng.randrange(PAGES)
                end = rng.randint(start, PAGES + 2)
                assert addresses.forward(start * P, (end - start) * P) == model.forward(start, end), (seed, start, end)
            starts = model.starts()
            for page in range(PAGES + 12):
                after = [s * P for s in starts if s >= page]
                assert addresses.next_start(page * P) == (after[0] if after else None), (seed, page)


def test_twenty_thousand_unmaps_then_nine_thousand_pieces_translate_right() -> None:
    """The size of an 18 GB GPU snapshot's plan (2 MiB pieces) in a tree that unmapped 20,000 of
    its planned pages during the fill: every piece gets exactly its pages still mapped."""
    base, piece, pieces, stride = 0x7F0000000000, 2 << 20, 9000, 230 * P
    addresses = AddressMap([(base, base + pieces * piece)])
    dropped = [base + k * stride for k in range(20000)]
    for address in dropped:
        addresses.apply(Unmap(address, address + P))
    for i in range(pieces):
        start, end = base + i * piece, base + (i + 1) * piece
        expected, at = [], start
        for gap in dropped[bisect_left(dropped, start) : bisect_left(dropped, end)]:
            if gap > at:
                expected.append((at, gap - at, at - start))
            at = gap + P
        if at < end:
            expected.append((at, end - at, at - start))
        assert addresses.forward(start, piece) == expected, i
    assert all(addresses.back(a) is None and addresses.back(a + P) == a + P for a in dropped)
