"""Store a dump while CRIU is still writing it.

CRIU writes each process's pages file front to back, and its page map entry by
entry. A follower thread polls both: it reads the entries completed since its last
poll (``GrowingPagemap``), cuts them (``GrowingCut``), and hands the pieces that can
no longer change and whose bytes are in the file to the ingest, so hashing,
compression and writing run alongside the dump instead of after it. A poll costs
what CRIU wrote since the last one, not the dump so far. Anything it gets wrong is
caught by ``Ingest.extend``, which checks the early pieces against the final plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from snapd_daemon.checkpoint.cutplan import GrowingCut, live_regions
from snapd_daemon.criu.images import PAGEMAP_NAME, GrowingPagemap, ImageFormatError
from snapd_daemon.store.protocol import IngestSession
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()


@dataclass
class _Followed:
    pagemap: GrowingPagemap
    # cut along the mappings read from /proc while the process is frozen for the dump;
    # the final plan uses the dumped mm image, and Ingest.extend checks they agree
    cut: GrowingCut


class DumpFollower(Poller):
    def __init__(self, ingest: IngestSession, images: Path, interval: float = 0.2) -> None:
        super().__init__("dump-follower", interval)
        self.ingest = ingest
        self.images = images
        self.followed: dict[str, _Followed] = {}  # by page map file name

    def poll(self) -> bool:
        """Submit newly settled pieces; False (stop following) on an unreadable image."""
        try:
            self._feed()
        except (OSError, ImageFormatError) as err:
            log.warning("ingest.follow_stopped", error=str(err))
            return False
        return True

    def _feed(self) -> None:
        for path in sorted(self.images.glob("pagemap-*.img")):
            if not PAGEMAP_NAME.fullmatch(path.name):
                continue
            followed = self.followed.get(path.name)
            if followed is None:
                pagemap = GrowingPagemap(path)
                followed = self.followed[path.name] = _Followed(pagemap, GrowingCut(live_regions(pagemap.pid)))
            runs = followed.pagemap.read_new()
            pages_file = followed.pagemap.pages_file
            if pages_file is None:
                continue
            followed.cut.add((r.vaddr, r.length, r.offset) for r in runs)
            try:
                available = (self.images / pages_file).stat().st_size
            except FileNotFoundError:
                continue
            pieces = followed.cut.settled_within(self.ingest.submitted(pages_file), available)
            if pieces:
                self.ingest.submit(pages_file, pieces)
