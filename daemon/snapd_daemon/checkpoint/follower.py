"""Store a dump while CRIU is still writing it.

CRIU writes each process's pages file front to back, and its page map entry by
entry. A follower thread polls both and hands the pieces that can no longer
change (``settled_pieces``) to the ingest, so hashing, compression and writing
run alongside the dump instead of after it. Anything it gets wrong is caught
by ``Ingest.complete``, which checks the early pieces against the final plan.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from snapd_daemon.checkpoint.cutplan import Region, live_regions, settled_pieces
from snapd_daemon.criu.images import PAGEMAP_NAME, ImageFormatError, read_pagemap
from snapd_daemon.store.protocol import IngestSession
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()


class DumpFollower(Poller):
    def __init__(self, ingest: IngestSession, images: Path, interval: float = 0.2) -> None:
        super().__init__("dump-follower", interval)
        self.ingest = ingest
        self.images = images
        # mappings of each process, read from /proc while it is frozen for the dump;
        # the final plan uses the dumped mm image, and finish() checks they agree
        self.regions: dict[int, list[Region]] = {}

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
            img = read_pagemap(path, growing=True)
            if img is None:
                continue
            try:
                available = (self.images / img.pages_file).stat().st_size
            except FileNotFoundError:
                continue
            if img.pid not in self.regions:
                self.regions[img.pid] = live_regions(img.pid)
            settled = settled_pieces([(r.vaddr, r.length, r.offset) for r in img.runs], available, self.regions[img.pid])
            done = self.ingest.submitted(img.pages_file)
            if len(settled) > done:
                self.ingest.submit(img.pages_file, settled[done:])
