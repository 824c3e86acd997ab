"""The open files of a process as /proc shows them."""

from __future__ import annotations

import os
from collections.abc import Iterator


def fd_links(pid: int, table: str = "fd") -> Iterator[tuple[str, str]]:
    """(entry, link target) for each entry of /proc/PID/``table`` ("fd", or "map_files" for
    the file mappings); none if the process has exited, and an entry closed meanwhile, or
    one this daemon may not read, is left out."""
    directory = f"/proc/{pid}/{table}"
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return
    for entry in entries:
        try:
            yield entry, os.readlink(f"{directory}/{entry}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
