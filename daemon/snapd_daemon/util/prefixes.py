"""Finding one id among many by a unique prefix (snapshot ids, instance ids)."""

from __future__ import annotations

from collections.abc import Iterable

# how many ids an ambiguous prefix's error lists
SHOWN_CANDIDATES = 8


class AmbiguousPrefix(Exception):
    """Several ids start with the prefix; ``count`` of them, ``candidates`` the first few as text."""

    def __init__(self, count: int, candidates: str) -> None:
        super().__init__(candidates)
        self.count = count
        self.candidates = candidates


def by_prefix(ref: str, ids: Iterable[str]) -> str | None:
    """The one id that starts with ``ref`` (an exact id counts), None when none does;
    raises AmbiguousPrefix when several do."""
    starting = sorted(i for i in ids if i.startswith(ref))
    if ref in starting:
        return ref
    if len(starting) <= 1:
        return starting[0] if starting else None
    shown = ", ".join(starting[:SHOWN_CANDIDATES]) + (
        f" and {len(starting) - SHOWN_CANDIDATES} more" if len(starting) > SHOWN_CANDIDATES else "")
    raise AmbiguousPrefix(len(starting), shown)
