"""Controlling terminals of a process tree: whether the tree owns them.

CRIU restores a pseudo-terminal when both of its ends are open in the dumped
tree: it makes the pair anew at the same index and gives the session leader its
controlling terminal back (zdtm's ``pty00``). A terminal whose master end is held
outside the tree (a shell's, sshd's) it can only inherit from its own stdin
(``shell_job``), which the daemon has none of, so such a tree is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapd_daemon.host.procfds import fd_links

# Unix98 pty slaves: majors 136-143 (UNIX98_PTY_SLAVE_MAJOR + 8 majors of 256 minors)
_PTS_MAJOR_FIRST, _PTS_MAJOR_LAST = 136, 143
_PTMX_PATHS = ("/dev/ptmx", "/dev/pts/ptmx")


@dataclass(frozen=True)
class Terminal:
    """A controlling terminal, as ``tty_nr`` of /proc/PID/stat encodes it."""

    tty_nr: int

    @property
    def major(self) -> int:
        return (self.tty_nr >> 8) & 0xFFF

    @property
    def minor(self) -> int:
        return (self.tty_nr & 0xFF) | ((self.tty_nr >> 12) & 0xFFF00)

    @property
    def pts_index(self) -> int | None:
        """N of /dev/pts/N; None for a terminal that is no pty slave (a console, a VT)."""
        if _PTS_MAJOR_FIRST <= self.major <= _PTS_MAJOR_LAST:
            return (self.major - _PTS_MAJOR_FIRST) * 256 + self.minor
        return None

    @property
    def name(self) -> str:
        if self.pts_index is not None:
            return f"/dev/pts/{self.pts_index}"
        return f"/dev/tty{self.minor}" if self.major == 4 else f"tty device {self.major}:{self.minor}"


@dataclass
class PtyEnds:
    """The pty ends the fds of a set of processes hold: indexes of masters and of slaves."""

    masters: set[int]
    slaves: set[int]

    def owns(self, terminal: Terminal) -> bool:
        """Both ends of ``terminal`` are held: CRIU can make it anew."""
        index = terminal.pts_index
        return index is not None and index in self.masters and index in self.slaves


def pty_ends(pids: list[int]) -> PtyEnds:
    """The pty masters (/dev/ptmx, by their ``tty-index``) and slaves (/dev/pts/N) open in
    these processes' fds; a process or fd that goes meanwhile is left out."""
    ends = PtyEnds(set(), set())
    for pid in pids:
        for fd, target in fd_links(pid):
            try:
                if target in _PTMX_PATHS:
                    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                        ends.masters |= {int(line.split()[1]) for line in info if line.startswith("tty-index:")}
                elif target.startswith("/dev/pts/"):
                    index = Terminal(os.stat(f"/proc/{pid}/fd/{fd}").st_rdev).pts_index
                    if index is not None:
                        ends.slaves.add(index)
            except (FileNotFoundError, ProcessLookupError):
                continue
    return ends
